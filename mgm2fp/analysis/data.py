"""Token sequences for the layer analysis, read from token-id arrays or plain text.

:func:`load_token_sequences` is the only entry point the analysis uses.
NOTE: it reads only ``.npy`` token ids and UTF-8 text files. It should call the shared loader of
``mgm2fp.data`` (datasets, packing) once that package exists, keeping this signature.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mgm2fp.errors import ConfigError

logger = logging.getLogger(__name__)

TOKEN_ID_SUFFIXES = (".npy",)
TEXT_SUFFIXES = (".txt", ".text", ".md")
TEXT_CHUNK_CHARACTERS = 1 << 20  # tokenise large text files 1 MiB of lines at a time


def load_token_sequences(data: str | Path, *, tokenizer: Any = None, seq_len: int, num_sequences: int | None = None) -> torch.Tensor:
    """Read ``data`` and pack its tokens into ``num_sequences`` sequences of ``seq_len`` tokens.

    ``data`` is a ``.npy`` array of integer token ids, a text file, or a folder. In a folder,
    every ``.npy`` file and every text file (``.txt``, ``.text``, ``.md``) is read in sorted path
    order. Token ids of every array are read as one row-major stream. Text is tokenised with
    ``tokenizer`` (a loaded tokenizer, or a folder or hub id for ``AutoTokenizer``), and the
    tokenizer's end-of-sequence token separates files. The stream is cut into consecutive
    sequences from the start, and the tail that does not fill a sequence is dropped. Reading
    stops once ``num_sequences`` sequences are complete; ``None`` reads everything.

    Returns:
        A ``LongTensor`` ``[N, seq_len]`` with ``N <= num_sequences``. N is smaller, with a
        logged warning, when the data is too short.

    Raises:
        ConfigError: when ``data`` is missing or contains no usable file, an array is not integer
            or has negative ids, text comes without a tokenizer, or not one full sequence fits.
    """
    if seq_len < 1:
        raise ConfigError(f"sequence length {seq_len} is invalid; give a positive --seq-len")
    if num_sequences is not None and num_sequences < 1:
        raise ConfigError(f"number of sequences {num_sequences} is invalid; give a positive --num-sequences")
    files = _data_files(Path(data).expanduser())
    needed = None if num_sequences is None else num_sequences * seq_len

    chunks: list[np.ndarray] = []
    total = 0
    loaded_tokenizer = None
    for file in files:
        if file.suffix in TOKEN_ID_SUFFIXES:
            pieces: Iterator[np.ndarray] = iter([_read_token_ids(file)])
        else:
            if loaded_tokenizer is None:
                loaded_tokenizer = _load_tokenizer(tokenizer, file)
            pieces = _tokenise_text_file(file, loaded_tokenizer)
        for piece in pieces:
            chunks.append(piece)
            total += piece.size
            if needed is not None and total >= needed:
                break
        if needed is not None and total >= needed:
            break

    stream = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    count = stream.size // seq_len
    if count == 0:
        raise ConfigError(f"data '{data}' contains only {stream.size} tokens, fewer than one sequence of {seq_len}; give more data or a smaller --seq-len")
    if num_sequences is not None and count < num_sequences:
        logger.warning("data '%s' fills only %d sequences of %d tokens, not the %d requested; analysing %d", data, count, seq_len, num_sequences, count)
    if num_sequences is not None:
        count = min(count, num_sequences)
    return torch.from_numpy(stream[: count * seq_len].reshape(count, seq_len).astype(np.int64))


def _data_files(path: Path) -> list[Path]:
    if not path.exists():
        raise ConfigError(f"data '{path}' not found; pass a .npy file of token ids, a text file, or a folder of them")
    if path.is_file():
        return [path]
    files = sorted(file for file in path.rglob("*") if file.is_file() and file.suffix in TOKEN_ID_SUFFIXES + TEXT_SUFFIXES)
    if not files:
        kinds = ", ".join(TOKEN_ID_SUFFIXES + TEXT_SUFFIXES)
        raise ConfigError(f"data folder '{path}' contains no {kinds} files; add token ids or text files")
    return files


def _read_token_ids(file: Path) -> np.ndarray:
    try:
        array = np.load(file, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ConfigError(f"could not read token ids from '{file}': {error}; save them with numpy.save as an integer array") from error
    if not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(f"'{file}' contains {array.dtype} values, not integer token ids; save an integer array")
    if array.size and array.min() < 0:
        raise ConfigError(f"'{file}' contains the negative token id {array.min()}; token ids must be >= 0")
    return array.reshape(-1).astype(np.int64)


def _load_tokenizer(tokenizer: Any, file: Path) -> Any:
    if tokenizer is None:
        raise ConfigError(f"data file '{file}' is text, but no tokenizer was given; pass --tokenizer (a folder or hub id with tokenizer files) or token ids as .npy")
    if not isinstance(tokenizer, (str, Path)):
        return tokenizer
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer))
    except (OSError, ValueError) as error:
        raise ConfigError(f"could not load a tokenizer from '{tokenizer}': {error}") from error


def _tokenise_text_file(file: Path, tokenizer: Any) -> Iterator[np.ndarray]:
    """Yield the token ids of ``file`` chunk by chunk, then the end-of-sequence token if any."""
    with open(file, encoding="utf-8", errors="replace") as handle:
        while True:
            lines = handle.readlines(TEXT_CHUNK_CHARACTERS)
            if not lines:
                break
            # verbose=False: a chunk longer than the tokenizer's model length is expected here.
            ids = tokenizer("".join(lines), add_special_tokens=False, verbose=False)["input_ids"]
            yield np.asarray(ids, dtype=np.int64)
    if tokenizer.eos_token_id is not None:
        yield np.asarray([tokenizer.eos_token_id], dtype=np.int64)
