"""Batches for one process of a data-parallel run, with a position that checkpoints can restore exactly.

Every process sees the same global order of sequences: a seeded permutation per epoch for
random-access data (or the stored order without shuffling), the stream's own order for streamed
data. Each global batch of ``batch_size x num_processes`` sequences is split by process index,
so the processes never share a sequence and a resumed run continues at the same sequence.
An epoch's last partial global batch is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from mgm2fp.data.sources import SequenceArray, SequenceStream
from mgm2fp.errors import ConfigError

logger = logging.getLogger(__name__)


class BatchStream:
    """Endless batches ``[batch_size, L]`` (int64) for process ``process_index`` of ``num_processes``."""

    def __init__(self, source: SequenceArray | SequenceStream, *, batch_size: int, process_index: int = 0, num_processes: int = 1, seed: int = 0, shuffle: bool = True) -> None:
        self.source = source
        self.batch_size = batch_size
        self.process_index = process_index
        self.num_processes = num_processes
        self.seed = seed
        self.shuffle = shuffle and isinstance(source, SequenceArray)
        self.epoch = 0
        self.offset = 0  # global sequences consumed in this epoch
        self._order: torch.Tensor | None = None
        self._stream: Iterator[np.ndarray] | None = None
        if isinstance(source, SequenceArray) and len(source) < self.global_batch:
            raise ConfigError(
                f"the data has {len(source)} sequences, fewer than one global batch of {self.global_batch} "
                f"(batch_size {batch_size} x {num_processes} processes); add data or lower --batch-size"
            )

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.num_processes

    def state_dict(self) -> dict[str, Any]:
        """Return the position: the epoch and the global sequences consumed in it."""
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.offset = int(state["offset"])
        self._order = None
        self._stream = None

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> torch.Tensor:
        if isinstance(self.source, SequenceArray):
            rows = self._next_indexed()
        else:
            rows = self._next_streamed()
        return torch.from_numpy(np.stack(rows))  # [B, L]

    def _local_slice(self) -> slice:
        start = self.process_index * self.batch_size
        return slice(start, start + self.batch_size)

    def _next_indexed(self) -> list[np.ndarray]:
        source = self.source
        assert isinstance(source, SequenceArray)
        if self.offset + self.global_batch > len(source):
            self.epoch += 1
            self.offset = 0
            self._order = None
        if self._order is None:
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
                self._order = torch.randperm(len(source), generator=generator)
            else:
                self._order = torch.arange(len(source))
        indices = self._order[self.offset : self.offset + self.global_batch][self._local_slice()]
        self.offset += self.global_batch
        return [source[int(index)] for index in indices]

    def _next_streamed(self) -> list[np.ndarray]:
        if self._stream is None:
            # NOTE: every process reads (and tokenises) the whole stream and keeps its share. A
            # resumed run also re-reads the sequences it skips, which is slow for huge corpora.
            self._stream = iter(self.source)
            for _ in range(self.offset):
                next(self._stream)
        rows: list[np.ndarray] = []
        while len(rows) < self.global_batch:
            try:
                rows.append(next(self._stream))
            except StopIteration:
                if self.offset == 0:
                    raise ConfigError(f"the streamed data yields {len(rows)} sequences, fewer than one global batch of {self.global_batch}; add data or lower --batch-size") from None
                self.epoch += 1
                self.offset = 0
                rows = []
                self._stream = iter(self.source)
        self.offset += self.global_batch
        return rows[self._local_slice()]


def iterate_once(source: SequenceArray | SequenceStream, *, batch_size: int, process_index: int = 0, num_processes: int = 1) -> Iterator[torch.Tensor]:
    """Yield this process's batches ``[<= batch_size, L]`` of one pass over ``source`` in order (for validation).

    Sequences are dealt round-robin by global batch, as in training; the last batch may be short
    and some processes may get no sequence from it.
    """
    rows: list[np.ndarray] = []
    global_batch = batch_size * num_processes
    for index, sequence in enumerate(source):
        if (index % global_batch) // batch_size == process_index:
            rows.append(sequence)
        if len(rows) == batch_size:
            yield torch.from_numpy(np.stack(rows))
            rows = []
    if rows:
        yield torch.from_numpy(np.stack(rows))
