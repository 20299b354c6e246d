"""Shared test fixtures: paths of the reference checkpoints and a Hugging Face cache builder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MGM2FP_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))
MDLM_TINY = FIXTURES / "mdlm-tiny"
HALTON_TINY = FIXTURES / "halton-maskgit-tiny"
MASKGIT_V1_TINY = FIXTURES / "maskgit-v1-tiny"

torch.set_num_threads(1)  # tiny models: one thread is fastest, and avoids contention on shared CI cores


def populate_hub_cache(hf_home: Path, repo_id: str, files: dict[str, Path], commit: str = "0123456789abcdef0123456789abcdef01234567", branch: str = "main") -> Path:
    """Lay out ``files`` as a Hugging Face cache snapshot of ``repo_id`` and return the snapshot folder."""
    repo_folder = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    (repo_folder / "refs").mkdir(parents=True, exist_ok=True)
    (repo_folder / "refs" / branch).write_text(commit)
    return snapshot


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty offline Hugging Face home for one test."""
    import huggingface_hub.constants as constants

    home = tmp_path / "hf_home"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home


@pytest.fixture
def mdlm_copy(tmp_path: Path) -> Path:
    """A writable copy of the mdlm-tiny checkpoint."""
    target = tmp_path / "mdlm-tiny"
    target.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(MDLM_TINY / name, target / name)
    return target


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run ``mgm2fp ARGS`` in this process; return the exit code, stdout and stderr."""
    import sys

    from mgm2fp.cli import main

    previous = sys.argv
    sys.argv = ["mgm2fp", *[str(arg) for arg in args]]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        if isinstance(exit_.code, int):
            code = exit_.code
        elif exit_.code is None:
            code = 0
        else:
            code = 1
    finally:
        sys.argv = previous
    captured = capsys.readouterr()
    return code, captured.out, captured.err


TINY_CORPUS = [
    "the quick brown fox jumps over the lazy dog .",
    "a list is a mutable sequence of items .",
    "the dictionary maps keys to values and the set holds unique items .",
    "python reads the module and runs each statement in order .",
]


def make_tiny_tokenizer(folder: Path, texts: list[str] | None = None, vocab_size: int = 96) -> Path:
    """Train a tiny byte-level BPE tokenizer on ``texts`` and save it in Hugging Face format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts or TINY_CORPUS * 4, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    folder.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(folder)
    return folder
