"""Reading analysis sequences from token-id arrays and text files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from mgm2fp.analysis.data import load_token_sequences
from mgm2fp.errors import ConfigError

WORDS = ["<unk>", "<eos>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran"]


def make_word_tokenizer(folder: Path) -> Path:
    """Save a whitespace word-level tokenizer (ids as in WORDS) that AutoTokenizer loads offline."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({word: index for index, word in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>").save_pretrained(folder)
    return folder


def test_npy_rows_kept_as_sequences(tmp_path):
    ids = np.arange(40).reshape(5, 8)
    np.save(tmp_path / "ids.npy", ids)
    tokens = load_token_sequences(tmp_path / "ids.npy", seq_len=8, num_sequences=3)
    assert tokens.dtype == torch.long
    assert tokens.tolist() == ids[:3].tolist()


def test_npy_stream_packed_and_tail_dropped(tmp_path):
    np.save(tmp_path / "ids.npy", np.arange(25, dtype=np.int32))
    tokens = load_token_sequences(tmp_path / "ids.npy", seq_len=10, num_sequences=None)
    assert tokens.shape == (2, 10)
    assert tokens[1].tolist() == list(range(10, 20))


def test_folder_read_in_path_order(tmp_path):
    np.save(tmp_path / "b.npy", np.full(6, 2))
    np.save(tmp_path / "a.npy", np.full(6, 1))
    (tmp_path / "notes.json").write_text("{}")  # not data: ignored
    tokens = load_token_sequences(tmp_path, seq_len=4, num_sequences=3)
    assert tokens.flatten().tolist() == [1] * 6 + [2] * 6


def test_short_data_warns(tmp_path, caplog):
    np.save(tmp_path / "ids.npy", np.arange(20))
    with caplog.at_level(logging.WARNING, logger="mgm2fp"):
        tokens = load_token_sequences(tmp_path / "ids.npy", seq_len=8, num_sequences=5)
    assert tokens.shape == (2, 8)
    assert "only 2 sequences" in caplog.text


def test_text_with_tokenizer(tmp_path):
    tokenizer = make_word_tokenizer(tmp_path / "tokenizer")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "1.txt").write_text("the cat sat\non the mat\n")
    (tmp_path / "data" / "2.txt").write_text("a dog ran")
    tokens = load_token_sequences(tmp_path / "data", tokenizer=tokenizer, seq_len=5, num_sequences=2)
    # the cat sat on the mat <eos> a dog ran <eos>
    assert tokens.tolist() == [[2, 3, 4, 5, 2], [6, 1, 7, 8, 9]]


def test_text_without_tokenizer_rejected(tmp_path):
    (tmp_path / "corpus.txt").write_text("the cat sat")
    with pytest.raises(ConfigError, match="--tokenizer"):
        load_token_sequences(tmp_path / "corpus.txt", seq_len=2)


BAD_DATA = [
    # (case name, how to make the file, expected words in the error)
    ("missing path", None, ["not found"]),
    ("float ids", lambda path: np.save(path / "d.npy", np.ones(10)), ["float64", "integer"]),
    ("negative ids", lambda path: np.save(path / "d.npy", np.array([3, -1, 2])), ["-1"]),
    ("pickled object", lambda path: np.save(path / "d.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True), ["could not read"]),
    ("too short", lambda path: np.save(path / "d.npy", np.arange(3)), ["3 tokens", "--seq-len"]),
]


@pytest.mark.parametrize(("case", "make", "words"), BAD_DATA, ids=[case[0] for case in BAD_DATA])
def test_bad_data_rejected(tmp_path, case, make, words):
    if make is not None:
        make(tmp_path)
    with pytest.raises(ConfigError) as raised:
        load_token_sequences(tmp_path / "d.npy", seq_len=4, num_sequences=2)
    for word in words:
        assert word in str(raised.value)


def test_empty_folder_rejected(tmp_path):
    with pytest.raises(ConfigError, match="contains no"):
        load_token_sequences(tmp_path, seq_len=4)


def test_invalid_sizes_rejected(tmp_path):
    np.save(tmp_path / "ids.npy", np.arange(10))
    with pytest.raises(ConfigError, match="sequence length 0"):
        load_token_sequences(tmp_path / "ids.npy", seq_len=0)
    with pytest.raises(ConfigError, match="number of sequences 0"):
        load_token_sequences(tmp_path / "ids.npy", seq_len=2, num_sequences=0)
