"""Tests of scripts/pretrain_mdlm.py and scripts/train_evaluator.py on a tiny synthetic corpus."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mgm2fp
from conftest import REPO_ROOT
from mgm2fp.data.corpus import build_corpus, read_documents, train_bpe_tokenizer

SCRIPTS = REPO_ROOT / "scripts"


def load_script(name: str):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny-corpus")
    source = root / "source"
    source.mkdir()
    for index in range(30):
        words = " ".join(f"word{(index * 7 + k) % 23}" for k in range(60))
        (source / f"doc{index:02d}.txt").write_text(f"Document {index} starts here with {words}.\n\nA second paragraph of document {index} with {words}.\n")
    build_corpus(source, root / "corpus", validation_fraction=0.2, heldout_fraction=0.1)
    train_bpe_tokenizer(read_documents(root / "corpus" / "train.txt"), root / "tokenizer", vocab_size=300)
    return root / "corpus", root / "tokenizer"


def pretrain_arguments(corpus: Path, tokenizer: Path, output: Path, steps: int) -> list[str]:
    return [
        "--corpus", str(corpus), "--tokenizer", str(tokenizer), "--output", str(output),
        "--hidden-dim", "32", "--cond-dim", "16", "--n-blocks", "2", "--n-heads", "2", "--seq-len", "16",
        "--batch-size", "4", "--max-steps", str(steps), "--warmup-steps", "2", "--log-every", "1",
        "--eval-every", "2", "--eval-sequences", "4", "--eval-repeats", "1",
    ]  # fmt: skip


def test_pretrain_runs_and_resumes(tiny_corpus: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, tokenizer_folder = tiny_corpus
    script = load_script("pretrain_mdlm")

    script.main(pretrain_arguments(corpus, tokenizer_folder, tmp_path / "straight", steps=5))
    script.main([*pretrain_arguments(corpus, tokenizer_folder, tmp_path / "resumed", steps=5), "--stop-at-step", "3"])
    assert not (tmp_path / "resumed" / "mdlm").exists()
    checkpoint = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 3
    script.main([*pretrain_arguments(corpus, tokenizer_folder, tmp_path / "resumed", steps=5), "--resume"])

    straight = load_file(str(tmp_path / "straight" / "mdlm" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "mdlm" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0, msg=key)

    records = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if "loss" in record] == [1, 2, 3, 4, 5]
    assert [record["step"] for record in records if "validation_nll" in record] == [2, 4, 5]
    assert all(torch.isfinite(torch.tensor(record["loss"])) for record in records if "loss" in record)

    from transformers import AutoTokenizer

    model = mgm2fp.load(tmp_path / "resumed" / "mdlm")
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "resumed" / "mdlm"), trust_remote_code=False)
    assert model.vocab_size == len(tokenizer) + 1
    assert model.mask_token_id == len(tokenizer)
    assert model.config["model_length"] == 16


def test_resume_without_checkpoint_fails(tiny_corpus: tuple[Path, Path], tmp_path: Path) -> None:
    corpus, tokenizer_folder = tiny_corpus
    script = load_script("pretrain_mdlm")

    with pytest.raises(SystemExit, match="does not exist"):
        script.main([*pretrain_arguments(corpus, tokenizer_folder, tmp_path / "run", steps=2), "--resume"])


def test_schedule_ends_on_time_budget() -> None:
    script = load_script("pretrain_mdlm")
    schedule = script.TrainingSchedule(peak_lr=1.0, warmup_steps=10, max_steps=1000, time_budget_seconds=100.0, min_lr_ratio=0.1)

    assert schedule.learning_rate(0, 0.0) == pytest.approx(0.1)
    assert schedule.learning_rate(10, 0.0) == pytest.approx(1.0, abs=1e-3)
    assert schedule.learning_rate(20, 50.0) == pytest.approx(0.55)
    assert not schedule.finished(999, 99.0)
    assert schedule.finished(20, 100.0)
    assert schedule.finished(1000, 0.0)
    assert schedule.learning_rate(20, 100.0) == pytest.approx(0.1)


def test_evaluator_trains_and_saves(tiny_corpus: tuple[Path, Path], tmp_path: Path) -> None:
    from transformers import AutoTokenizer, GPT2LMHeadModel

    corpus, tokenizer_folder = tiny_corpus
    script = load_script("train_evaluator")
    arguments = ["--corpus", str(corpus), "--tokenizer", str(tokenizer_folder), "--output", str(tmp_path / "run")]
    arguments += ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--context", "32", "--batch-size", "4", "--max-steps", "3", "--warmup-steps", "1"]
    script.main(arguments)

    folder = tmp_path / "run" / "evaluator"
    model = GPT2LMHeadModel.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert model.config.vocab_size == len(tokenizer)
    assert next(model.parameters()).dtype == torch.float16
    evaluation = json.loads((folder / "evaluation.json").read_text())
    assert evaluation["step"] == 3
    assert 1.0 < evaluation["validation_perplexity"] < 10 * len(tokenizer)
