"""Training data: text and pre-tokenised ids as fixed-length sequences, and per-process batches."""

from mgm2fp.data.batches import BatchStream, iterate_once
from mgm2fp.data.packing import DocumentPacker, pack_documents
from mgm2fp.data.sources import DataSettings, SequenceArray, SequenceStream, check_token_ids, open_sequences
from mgm2fp.data.tokenizer import resolve_tokenizer, special_token_ids

__all__ = [
    "BatchStream",
    "DataSettings",
    "DocumentPacker",
    "SequenceArray",
    "SequenceStream",
    "check_token_ids",
    "iterate_once",
    "open_sequences",
    "pack_documents",
    "resolve_tokenizer",
    "special_token_ids",
]
