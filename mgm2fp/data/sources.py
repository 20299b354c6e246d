"""Training data for fine-tuning: text or pre-tokenised ids, in memory or streamed, as fixed-length sequences.

Accepted forms of ``data``:

- a text file (``.txt``, ``.md``, ``.jsonl`` with a text field) or a folder of them;
- a Hugging Face dataset saved with ``save_to_disk``, or a dataset name for ``load_dataset``, with
  a text column or an ``input_ids`` column;
- pre-tokenised ids: a ``.npy`` array (1-D stream or ``[N, seq_len]`` rows) or a raw ``.bin`` token
  stream read as a memory map.

Text is tokenised with the model's tokenizer and packed as MDLM packs OpenWebText
(:mod:`mgm2fp.data.packing`). In memory, sequences are random-access (:class:`SequenceArray`);
with ``streaming`` they are produced on the fly (:class:`SequenceStream`), for corpora that do not
fit in memory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mgm2fp.data.packing import pack_documents
from mgm2fp.errors import ConfigError

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".json")
TOKEN_SUFFIXES = (".npy", ".bin")
HF_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
TOKENIZE_BATCH = 256  # documents per tokenizer call


class SequenceArray:
    """Random-access sequences ``[L]``: rows of a 2-D array, or ``seq_len`` chunks of a flat stream (memory maps stay on disk)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, *, start: int = 0, stop: int | None = None) -> None:
        self.tokens = tokens
        self.seq_len = seq_len
        total = tokens.shape[0] if tokens.ndim == 2 else tokens.shape[0] // seq_len
        self.start = start
        self.stop = total if stop is None else min(stop, total)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(index)
        row = self.start + index
        if self.tokens.ndim == 2:
            return np.asarray(self.tokens[row], dtype=np.int64)
        return np.asarray(self.tokens[row * self.seq_len : (row + 1) * self.seq_len], dtype=np.int64)

    def split(self, count: int) -> tuple["SequenceArray", "SequenceArray"]:
        """Split off the last ``count`` sequences: return ``(first part, last count)``."""
        boundary = self.stop - count
        return SequenceArray(self.tokens, self.seq_len, start=self.start, stop=boundary), SequenceArray(self.tokens, self.seq_len, start=boundary, stop=self.stop)


class SequenceStream:
    """Sequences ``[L]`` produced on the fly by ``make_iterator``; each call starts the data from its beginning."""

    def __init__(self, make_iterator: Callable[[], Iterator[np.ndarray]], *, skip: int = 0, limit: int | None = None) -> None:
        self.make_iterator = make_iterator
        self.skip = skip
        self.limit = limit

    def __iter__(self) -> Iterator[np.ndarray]:
        for index, sequence in enumerate(self.make_iterator()):
            if index < self.skip:
                continue
            if self.limit is not None and index >= self.skip + self.limit:
                return
            yield sequence

    def split(self, count: int) -> tuple["SequenceStream", "SequenceStream"]:
        """Hold out the first ``count`` sequences: return ``(the rest, the first count)``."""
        return SequenceStream(self.make_iterator, skip=self.skip + count), SequenceStream(self.make_iterator, skip=self.skip, limit=count)


@dataclass
class DataSettings:
    """Options of :func:`open_sequences` besides the path."""

    seq_len: int
    vocab_size: int
    mask_token_id: int
    tokenizer_loader: Callable[[], Any] | None = None  # called only for text data
    text_column: str = "text"
    split: str = "train"
    dataset_config: str | None = None
    streaming: bool = False
    line_documents: bool = False
    token_dtype: str = "uint16"
    description: dict[str, Any] = field(default_factory=dict)


def open_sequences(data: str | Path | Any, settings: DataSettings) -> SequenceArray | SequenceStream:
    """Open ``data`` as fixed-length sequences and record what was read in ``settings.description``.

    ``data`` may also be a ``datasets.Dataset`` object. Raises :class:`ConfigError` for a missing
    path, an unknown format, ids outside the model's vocabulary, or too little data for one sequence.
    """
    if _is_hf_dataset(data):
        return _open_dataset_object(data, settings, name="dataset object")
    path = Path(str(data)).expanduser()
    if path.is_file() and path.suffix in TOKEN_SUFFIXES:
        return _open_token_file(path, settings)
    if path.is_dir() and any((path / marker).is_file() for marker in HF_DATASET_MARKERS):
        return _open_saved_dataset(path, settings)
    if path.is_file() or path.is_dir():
        return _open_text(path, settings)
    if path.suffix or str(data).startswith((".", "/", "~")):
        raise ConfigError(f"data '{data}' not found; give a text file or folder, a .npy/.bin token file, or a Hugging Face dataset")
    return _open_dataset_by_name(str(data), settings)


# Pre-tokenised ids --------------------------------------------------------------------------------


def _open_token_file(path: Path, settings: DataSettings) -> SequenceArray | SequenceStream:
    if path.suffix == ".npy":
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    else:
        tokens = np.memmap(path, dtype=np.dtype(settings.token_dtype), mode="r")
    if tokens.ndim == 2 and tokens.shape[1] != settings.seq_len:
        raise ConfigError(f"'{path}' contains rows of {tokens.shape[1]} tokens but seq_len is {settings.seq_len}; set --seq-len {tokens.shape[1]} or save a 1-D token stream")
    if tokens.ndim not in (1, 2) or not np.issubdtype(tokens.dtype, np.integer):
        raise ConfigError(f"'{path}' must hold integer token ids as a 1-D stream or [N, seq_len] rows, got shape {tokens.shape} and dtype {tokens.dtype}")
    check_token_ids(tokens, settings, origin=str(path))
    sequences = SequenceArray(tokens, settings.seq_len)
    _require_sequences(len(sequences), path, settings)
    settings.description.update(kind="tokens", path=str(path), num_sequences=len(sequences), num_tokens=len(sequences) * settings.seq_len)
    return sequences


def check_token_ids(tokens: np.ndarray, settings: DataSettings, *, origin: str, chunk: int = 1 << 24) -> None:
    """Raise :class:`ConfigError` when ``tokens`` hold an id outside ``[0, vocab_size)`` or the mask id."""
    flat = tokens.reshape(-1)
    for start in range(0, flat.shape[0], chunk):
        block = np.asarray(flat[start : start + chunk])
        if block.size == 0:
            continue
        low, high = int(block.min()), int(block.max())
        if low < 0 or high >= settings.vocab_size:
            bad = low if low < 0 else high
            raise ConfigError(f"'{origin}' contains token id {bad}, outside the model's vocabulary [0, {settings.vocab_size}); tokenise with the model's tokenizer")
        if (block == settings.mask_token_id).any():
            raise ConfigError(f"'{origin}' contains the mask token id {settings.mask_token_id}; the data must be clean text ids (re-tokenise, or set token_dtype if the .bin file is not {settings.token_dtype})")


def _require_sequences(count: int, origin: Any, settings: DataSettings) -> None:
    if count == 0:
        raise ConfigError(f"data '{origin}' yields no sequence of {settings.seq_len} tokens; add data or lower --seq-len")


# Text --------------------------------------------------------------------------------------------


def _text_files(path: Path) -> list[Path]:
    suffixes = TEXT_SUFFIXES + JSONL_SUFFIXES
    if path.is_file():
        return [path]
    files = sorted(file for file in path.rglob("*") if file.is_file() and file.suffix in suffixes)
    if not files:
        raise ConfigError(f"folder '{path}' contains no text files ({', '.join(suffixes)})")
    return files


def _documents_from_files(files: list[Path], settings: DataSettings) -> Iterator[str]:
    for file in files:
        if file.suffix in JSONL_SUFFIXES:
            yield from _jsonl_documents(file, settings.text_column)
        elif settings.line_documents:
            with file.open(encoding="utf-8") as handle:
                yield from (line.rstrip("\n") for line in handle if line.strip())
        else:
            yield file.read_text(encoding="utf-8")


def _jsonl_documents(file: Path, column: str) -> Iterator[str]:
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(f"line {number} of '{file}' is not valid JSON: {error}") from error
            if column not in record:
                raise ConfigError(f"line {number} of '{file}' has no '{column}' field; set text_column to the field that contains the text")
            yield str(record[column])


def _tokenized(documents: Iterator[str], tokenizer: Any) -> Iterator[list[int]]:
    # Documents are longer than the model context before packing, so the length warning is off.
    batch: list[str] = []
    for document in documents:
        batch.append(document)
        if len(batch) == TOKENIZE_BATCH:
            yield from tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
            batch = []
    if batch:
        yield from tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]


def _packed_text(make_documents: Callable[[], Iterator[str]], settings: DataSettings, origin: str) -> Callable[[], Iterator[np.ndarray]]:
    from mgm2fp.data.tokenizer import special_token_ids

    if settings.tokenizer_loader is None:
        raise ConfigError(f"data '{origin}' is text and needs a tokenizer; pass --tokenizer")
    tokenizer = settings.tokenizer_loader()
    bos, eos = special_token_ids(tokenizer)
    settings.description["tokenizer"] = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)

    def make_iterator() -> Iterator[np.ndarray]:
        return pack_documents(_tokenized(make_documents(), tokenizer), settings.seq_len, bos_token_id=bos, eos_token_id=eos)

    return make_iterator


def _finish_text(make_iterator: Callable[[], Iterator[np.ndarray]], settings: DataSettings, origin: str) -> SequenceArray | SequenceStream:
    if settings.streaming:
        settings.description.update(streaming=True)

        def checked() -> Iterator[np.ndarray]:
            for sequence in make_iterator():
                check_token_ids(sequence, settings, origin=origin)
                yield sequence

        return SequenceStream(checked)
    rows = list(make_iterator())
    _require_sequences(len(rows), origin, settings)
    tokens = np.stack(rows)  # [N, L]
    check_token_ids(tokens, settings, origin=origin)
    settings.description.update(num_sequences=len(rows), num_tokens=int(tokens.size))
    return SequenceArray(tokens, settings.seq_len)


def _open_text(path: Path, settings: DataSettings) -> SequenceArray | SequenceStream:
    files = _text_files(path)
    settings.description.update(kind="text", path=str(path), num_files=len(files))
    make_iterator = _packed_text(lambda: _documents_from_files(files, settings), settings, str(path))
    return _finish_text(make_iterator, settings, str(path))


# Hugging Face datasets ---------------------------------------------------------------------------


def _is_hf_dataset(data: Any) -> bool:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        return False
    return isinstance(data, (datasets.Dataset, datasets.IterableDataset, datasets.DatasetDict, datasets.IterableDatasetDict))


def _open_saved_dataset(path: Path, settings: DataSettings) -> SequenceArray | SequenceStream:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    return _open_dataset_object(loaded, settings, name=str(path))


def _open_dataset_by_name(name: str, settings: DataSettings) -> SequenceArray | SequenceStream:
    import datasets

    logger.info("loading dataset %s (split %s, streaming %s)", name, settings.split, settings.streaming)
    try:
        loaded = datasets.load_dataset(name, settings.dataset_config, split=settings.split, streaming=settings.streaming)
    except (FileNotFoundError, ValueError, ConnectionError) as error:
        raise ConfigError(f"could not load dataset '{name}': {error}; give a local path, or a dataset name that is cached or reachable") from error
    return _open_dataset_object(loaded, settings, name=name)


def _open_dataset_object(dataset: Any, settings: DataSettings, *, name: str) -> SequenceArray | SequenceStream:
    import datasets

    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if settings.split not in dataset:
            raise ConfigError(f"dataset '{name}' has no split '{settings.split}'; available: {', '.join(dataset)}; set dataset_split")
        dataset = dataset[settings.split]
    columns = dataset.column_names or []
    settings.description.update(kind="dataset", path=name, split=settings.split)
    if "input_ids" in columns:
        settings.description["column"] = "input_ids"
        return _open_dataset_ids(dataset, settings, name)
    if settings.text_column not in columns:
        raise ConfigError(f"dataset '{name}' has no '{settings.text_column}' or 'input_ids' column (columns: {', '.join(columns)}); set text_column")
    settings.description["column"] = settings.text_column

    def make_documents() -> Iterator[str]:
        for row in dataset:
            yield str(row[settings.text_column])

    make_iterator = _packed_text(make_documents, settings, name)
    return _finish_text(make_iterator, settings, name)


def _open_dataset_ids(dataset: Any, settings: DataSettings, name: str) -> SequenceArray | SequenceStream:
    """Rows of exactly ``seq_len`` ids are used as they are; other rows are concatenated and cut."""

    def make_iterator() -> Iterator[np.ndarray]:
        pending: list[int] = []
        for row in dataset:
            ids = [int(token) for token in row["input_ids"]]
            if len(ids) == settings.seq_len and not pending:
                yield np.asarray(ids, dtype=np.int64)
                continue
            pending.extend(ids)
            while len(pending) >= settings.seq_len:
                yield np.asarray(pending[: settings.seq_len], dtype=np.int64)
                pending = pending[settings.seq_len :]

    return _finish_text(make_iterator, settings, name)
