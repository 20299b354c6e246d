"""``mgm2fp eval`` and the budget evaluation loop on a tiny random MDLM with its own tokenizer."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

import mgm2fp
from mgm2fp.errors import ConfigError
from mgm2fp.evaluation.budgets import evaluate_budgets, parse_budgets
from mgm2fp.evaluation.text import Evaluator
from mgm2fp.families.mdlm import MDLMDiT
from mgm2fp.families.mdlm_loader import save as save_mdlm
from conftest import make_tiny_tokenizer, run_cli


@pytest.fixture(scope="module")
def text_models(tmp_path_factory):
    """A random MDLM and a random GPT-2 evaluator sharing one tiny tokenizer."""
    root = tmp_path_factory.mktemp("text-models")
    tokenizer_folder = make_tiny_tokenizer(root / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    torch.manual_seed(0)
    config = {"model_type": "mdlm", "hidden_dim": 32, "cond_dim": 16, "n_blocks": 4, "n_heads": 2, "vocab_size": len(tokenizer) + 1, "model_length": 32, "time_conditioning": False}
    model = MDLMDiT(config)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    model.source_folder = tokenizer_folder
    mdlm_folder = root / "mdlm"
    mdlm_folder.mkdir()
    save_mdlm(model, mdlm_folder)
    evaluator_folder = root / "evaluator"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2)).save_pretrained(evaluator_folder)
    tokenizer.save_pretrained(evaluator_folder)
    return mdlm_folder, evaluator_folder


def test_parse_budgets():
    assert parse_budgets("24,48, 96") == [24, 48, 96]
    with pytest.raises(ConfigError, match="'24,x'"):
        parse_budgets("24,x")
    with pytest.raises(ConfigError, match="positive"):
        parse_budgets("0,12")


def test_evaluate_budgets_source_and_fixed_point(text_models):
    mdlm_folder, evaluator_folder = text_models
    evaluator = Evaluator.load(str(evaluator_folder))
    source = mgm2fp.load(mdlm_folder)
    results = evaluate_budgets(source, evaluator, budgets=[8, 16], num_samples=3, seq_len=16, seed=1)
    assert [result.budget for result in results] == [8, 16]
    assert [result.num_steps for result in results] == [2, 4]
    for result in results:
        assert result.block_forward_passes <= result.budget
        assert math.isfinite(result.gen_ppl)
        assert result.gen_ppl > 1
        assert 0 < result.entropy <= math.log(16)

    converted = mgm2fp.convert(mdlm_folder, pre_layers="0", fixed_point_layers="1", post_layers="3")
    fixed_point_results = evaluate_budgets(converted, evaluator, budgets=[12], num_samples=2, seq_len=16, reuse="3sr")
    assert fixed_point_results[0].block_forward_passes <= 12
    assert fixed_point_results[0].iterations


def test_eval_cli_writes_results(text_models, tmp_path, capsys):
    mdlm_folder, evaluator_folder = text_models
    reference = tmp_path / "reference.txt"
    reference.write_text("the quick brown fox jumps over the lazy dog .")
    output = tmp_path / "results.json"
    args = ["eval", mdlm_folder, "--evaluator", evaluator_folder, "--budgets", "8,16", "--num-samples", "2", "--seq-len", "16", "--reference-text", reference, "--output", output]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    report = json.loads(output.read_text())
    assert [entry["budget"] for entry in report["results"]] == [8, 16]
    for entry in report["results"]:
        assert {"budget", "gen_ppl", "entropy", "block_forward_passes", "tokens_per_second"} <= set(entry)
    assert report["reference_perplexity"] > 1
    assert "gen PPL" in out


def test_eval_cli_needs_evaluator_offline(text_models, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(["eval", text_models[0], "--output", tmp_path / "results.json"], capsys)
    assert code == 1
    assert "--evaluator" in err
    assert not (tmp_path / "results.json").exists()
