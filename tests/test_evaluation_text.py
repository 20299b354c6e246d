"""Generative perplexity and unigram entropy."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from mgm2fp.errors import SourceNotFoundError
from mgm2fp.evaluation.text import Evaluator, unigram_entropy
from conftest import make_tiny_tokenizer


@pytest.fixture(scope="module")
def evaluator_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluator")
    tokenizer_folder = make_tiny_tokenizer(folder)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2))
    model.save_pretrained(folder)
    return folder


def test_unigram_entropy_values():
    entropy = unigram_entropy(torch.tensor([[5, 5, 5, 5], [1, 2, 3, 4], [1, 1, 2, 2]]))
    assert entropy[0].item() == pytest.approx(0.0, abs=1e-6)
    assert entropy[1].item() == pytest.approx(math.log(4), rel=1e-6)
    assert entropy[2].item() == pytest.approx(math.log(2), rel=1e-6)


def test_perplexity_matches_transformers_loss(evaluator_folder):
    evaluator = Evaluator.load(str(evaluator_folder))
    text = "the lazy dog reads the module"
    ids = [evaluator.tokenizer.bos_token_id, *evaluator.tokenizer(text, add_special_tokens=False)["input_ids"]]
    assert len(ids) <= evaluator.max_length
    with torch.no_grad():
        loss = evaluator.model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
    assert evaluator.perplexity([text]) == pytest.approx(math.exp(loss.item()), rel=1e-5)


def test_perplexity_of_long_text_uses_windows(evaluator_folder):
    evaluator = Evaluator.load(str(evaluator_folder))
    long_text = " ".join(["the quick brown fox jumps over the lazy dog ."] * 6)
    total_nll, total_tokens = evaluator.token_nlls([long_text])
    token_count = len(evaluator.tokenizer(long_text, add_special_tokens=False)["input_ids"])
    assert token_count > evaluator.max_length
    assert total_tokens == token_count
    assert math.isfinite(total_nll)


def test_padding_does_not_change_perplexity(evaluator_folder):
    evaluator = Evaluator.load(str(evaluator_folder))
    texts = ["the dog", "a list is a mutable sequence of items"]
    separately = [evaluator.token_nlls([text]) for text in texts]
    together = evaluator.token_nlls(texts, batch_size=2)
    assert together[1] == sum(count for _, count in separately)
    assert together[0] == pytest.approx(sum(nll for nll, _ in separately), rel=1e-6)


def test_missing_evaluator(tmp_path):
    with pytest.raises(SourceNotFoundError, match="--evaluator"):
        Evaluator.load(str(tmp_path / "no-such-evaluator"))
