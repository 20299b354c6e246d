"""Packing of tokenised documents into fixed-length training sequences.

Text is packed the way MDLM prepares OpenWebText ("wrapped" data, Sahoo et al., arXiv
2406.07524): every document is followed by the end-of-text token, the documents are concatenated
into one stream, the stream is cut into chunks of ``seq_len - 2`` tokens, and each chunk is framed
by the beginning- and end-of-text tokens, so every sequence starts with BOS and ends with EOS. The
last partial chunk is dropped. Pre-tokenised flat streams are cut into ``seq_len`` chunks as they
are, since their framing is the data's own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np


class DocumentPacker:
    """Accumulate documents and emit framed sequences of ``seq_len`` tokens as they fill up."""

    def __init__(self, seq_len: int, *, bos_token_id: int, eos_token_id: int) -> None:
        if seq_len < 3:
            raise ValueError(f"seq_len {seq_len} leaves no room for text between BOS and EOS; use at least 3")
        self.seq_len = seq_len
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self._buffer: list[int] = []

    @property
    def chunk_len(self) -> int:
        """Tokens of document text per sequence (two positions go to BOS and EOS)."""
        return self.seq_len - 2

    def add(self, document: Iterable[int]) -> Iterator[np.ndarray]:
        """Append ``document`` and its end-of-text token; yield every sequence ``[seq_len]`` completed."""
        self._buffer.extend(int(token) for token in document)
        self._buffer.append(self.eos_token_id)
        while len(self._buffer) >= self.chunk_len:
            chunk, self._buffer = self._buffer[: self.chunk_len], self._buffer[self.chunk_len :]
            yield np.asarray([self.bos_token_id, *chunk, self.eos_token_id], dtype=np.int64)


def pack_documents(documents: Iterable[Iterable[int]], seq_len: int, *, bos_token_id: int, eos_token_id: int) -> Iterator[np.ndarray]:
    """Yield the framed sequences ``[seq_len]`` of ``documents`` (token id lists), dropping the remainder."""
    packer = DocumentPacker(seq_len, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    for document in documents:
        yield from packer.add(document)
