"""Tiny models, tokenizers and data shared by the fine-tuning tests."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np

import mgm2fp
from conftest import MDLM_TINY

TEXT = (
    "the quick brown fox jumps over the lazy dog. "
    "a fixed point is a state that the shared block maps to itself. "
    "masked diffusion models reveal tokens step by step, from all masks to clean text. "
)


def build_char_tokenizer(folder: Path) -> Path:
    """Save a character-level tokenizer (43 ids, end-of-text id 0) that fits mdlm-tiny's 100 text ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<unk>": 1}
    for character in string.ascii_lowercase + string.digits + " .,'\n":
        vocab[character] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    return folder


def write_token_stream(path: Path, *, num_tokens: int = 32 * 40, seed: int = 0, high: int = 100) -> Path:
    """Save random clean ids (below mdlm-tiny's mask id 100) as a 1-D ``.npy`` stream."""
    rng = np.random.default_rng(seed)
    np.save(path, rng.integers(0, high, size=num_tokens).astype(np.int32))
    return path


def tiny_fixed_point(folder: Path | None = None) -> mgm2fp.FixedPointMGM:
    """mdlm-tiny converted as pre 0 | fixed point 1-4 | post 5, optionally saved in ``folder``."""
    model = mgm2fp.convert(mgm2fp.load(MDLM_TINY), pre_layers="0", fixed_point_layers="1-4", post_layers="5")
    if folder is not None:
        mgm2fp.save_pretrained(model, folder)
    return model
