"""Training data: packing, text and token files, Hugging Face datasets, streaming and per-process batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from finetune_helpers import TEXT, build_char_tokenizer
from mgm2fp.data import BatchStream, DataSettings, SequenceArray, SequenceStream, iterate_once, open_sequences, pack_documents
from mgm2fp.errors import ConfigError

SEQ_LEN = 16


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_char_tokenizer(tmp_path_factory.mktemp("tokenizer")))


def settings(tokenizer=None, **options) -> DataSettings:
    return DataSettings(seq_len=SEQ_LEN, vocab_size=101, mask_token_id=100, tokenizer_loader=(lambda: tokenizer) if tokenizer else None, **options)


def test_packing_frames_each_sequence():
    documents = [[5] * 10, [6] * 20, [7] * 3]
    sequences = list(pack_documents(documents, 8, bos_token_id=1, eos_token_id=2))
    stream = [token for document in documents for token in (*document, 2)]
    assert all(sequence.shape == (8,) for sequence in sequences)
    assert all(sequence[0] == 1 and sequence[-1] == 2 for sequence in sequences)
    # The inner tokens are the document stream (each document followed by EOS), cut every 6 tokens.
    inner = [token for sequence in sequences for token in sequence[1:-1]]
    assert inner == stream[: len(inner)]
    assert len(sequences) == len(stream) // 6


def test_text_folder_is_tokenised_and_packed(tmp_path, tokenizer):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text(TEXT)
    (folder / "b.md").write_text(TEXT.upper())
    (folder / "skip.bin.bak").write_text("ignored")
    description_settings = settings(tokenizer)
    sequences = open_sequences(folder, description_settings)
    assert isinstance(sequences, SequenceArray)
    expected_tokens = len(tokenizer(TEXT)["input_ids"]) * 2 + 2  # two documents, each with EOS
    assert len(sequences) == expected_tokens // (SEQ_LEN - 2)
    first = sequences[0]
    assert first[0] == tokenizer.eos_token_id  # GPT-2 style: BOS = EOS
    assert first[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(first[1:-1]) == tokenizer.decode(tokenizer(TEXT)["input_ids"][: SEQ_LEN - 2])
    assert description_settings.description["kind"] == "text"
    assert description_settings.description["num_files"] == 2


def test_line_documents_and_jsonl(tmp_path, tokenizer):
    lines = tmp_path / "lines.txt"
    lines.write_text("one line here\n\nsecond line of text\n")
    by_line = open_sequences(lines, settings(tokenizer, line_documents=True))
    whole = open_sequences(lines, settings(tokenizer))
    assert len(by_line) >= 1
    assert len(whole) >= 1
    records = tmp_path / "docs.jsonl"
    records.write_text("\n".join(json.dumps({"body": TEXT}) for _ in range(2)))
    with pytest.raises(ConfigError, match="no 'text' field"):
        open_sequences(records, settings(tokenizer))
    assert len(open_sequences(records, settings(tokenizer, text_column="body"))) > 0


def test_text_without_tokenizer_rejected(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(TEXT)
    with pytest.raises(ConfigError, match="tokenizer"):
        open_sequences(path, settings())


def test_npy_stream_and_rows(tmp_path):
    stream = np.arange(SEQ_LEN * 5, dtype=np.int32) % 100
    np.save(tmp_path / "stream.npy", stream)
    sequences = open_sequences(tmp_path / "stream.npy", settings())
    assert len(sequences) == 5
    assert np.array_equal(sequences[1], stream[SEQ_LEN : 2 * SEQ_LEN])
    np.save(tmp_path / "rows.npy", stream.reshape(5, SEQ_LEN))
    assert np.array_equal(open_sequences(tmp_path / "rows.npy", settings())[4], stream[-SEQ_LEN:])
    np.save(tmp_path / "short_rows.npy", stream.reshape(10, SEQ_LEN // 2))
    with pytest.raises(ConfigError, match="--seq-len 8"):
        open_sequences(tmp_path / "short_rows.npy", settings())


def test_bin_memmap(tmp_path):
    stream = (np.arange(SEQ_LEN * 3) % 100).astype(np.uint16)
    stream.tofile(tmp_path / "train.bin")
    sequences = open_sequences(tmp_path / "train.bin", settings())
    assert isinstance(sequences.tokens, np.memmap)
    assert np.array_equal(sequences[2], stream[2 * SEQ_LEN :])
    stream.astype(np.uint32).tofile(tmp_path / "wide.bin")
    assert len(open_sequences(tmp_path / "wide.bin", settings(token_dtype="uint32"))) == 3


@pytest.mark.parametrize(("bad", "message"), [(100, "mask token id 100"), (250, "token id 250, outside")])
def test_bad_token_ids_rejected(tmp_path, bad, message):
    stream = np.zeros(SEQ_LEN * 2, dtype=np.int32)
    stream[5] = bad
    np.save(tmp_path / "bad.npy", stream)
    with pytest.raises(ConfigError, match=message):
        open_sequences(tmp_path / "bad.npy", settings())


def test_too_little_data_rejected(tmp_path):
    np.save(tmp_path / "tiny.npy", np.zeros(SEQ_LEN - 1, dtype=np.int32))
    with pytest.raises(ConfigError, match="no sequence of 16 tokens"):
        open_sequences(tmp_path / "tiny.npy", settings())


def test_missing_path_rejected(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        open_sequences(tmp_path / "absent.txt", settings())


def test_saved_hf_dataset_text_and_ids(tmp_path, tokenizer):
    import datasets

    datasets.Dataset.from_dict({"text": [TEXT, TEXT]}).save_to_disk(str(tmp_path / "text_ds"))
    from_text = open_sequences(tmp_path / "text_ds", settings(tokenizer))
    assert len(from_text) > 0
    ids = [list(range(1, SEQ_LEN + 1)), list(range(2, SEQ_LEN + 2))]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"input_ids": ids})}).save_to_disk(str(tmp_path / "ids_ds"))
    from_ids = open_sequences(tmp_path / "ids_ds", settings())
    assert len(from_ids) == 2
    assert from_ids[1].tolist() == ids[1]
    with pytest.raises(ConfigError, match="no split 'validation'"):
        open_sequences(tmp_path / "ids_ds", settings(split="validation"))


def test_dataset_object_without_text_column_rejected():
    import datasets

    with pytest.raises(ConfigError, match="no 'text' or 'input_ids' column"):
        open_sequences(datasets.Dataset.from_dict({"body": ["x"]}), settings())


def test_streaming_matches_in_memory(tmp_path, tokenizer):
    path = tmp_path / "a.txt"
    path.write_text(TEXT * 3)
    in_memory = open_sequences(path, settings(tokenizer))
    streamed = open_sequences(path, settings(tokenizer, streaming=True))
    assert isinstance(streamed, SequenceStream)
    assert [sequence.tolist() for sequence in streamed] == [in_memory[index].tolist() for index in range(len(in_memory))]
    rest, held_out = streamed.split(2)
    assert len(list(held_out)) == 2
    assert next(iter(rest)).tolist() == in_memory[2].tolist()


def _array(count: int) -> SequenceArray:
    return SequenceArray(np.arange(count * 4).reshape(count, 4), 4)


def test_batches_split_global_batch_between_processes():
    source = _array(12)
    streams = [BatchStream(source, batch_size=2, process_index=rank, num_processes=2, seed=3) for rank in range(2)]
    seen = []
    for _ in range(3):
        batches = [next(stream) for stream in streams]
        seen.extend(row[0].item() // 4 for batch in batches for row in batch)
    assert sorted(seen) == list(range(12))  # one epoch, no sequence shared or skipped


def test_batches_resume_at_same_position():
    source = _array(10)
    reference = BatchStream(source, batch_size=3, seed=1)
    expected = [next(reference) for _ in range(7)]
    first = BatchStream(source, batch_size=3, seed=1)
    for _ in range(4):
        next(first)
    resumed = BatchStream(source, batch_size=3, seed=1)
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(next(resumed), batch) for batch in expected[4:])


def test_streamed_batches_resume_at_same_position(tmp_path, tokenizer):
    path = tmp_path / "a.txt"
    path.write_text(TEXT * 4)
    source = open_sequences(path, settings(tokenizer, streaming=True))
    reference = BatchStream(source, batch_size=2)
    expected = [next(reference) for _ in range(6)]
    first = BatchStream(source, batch_size=2)
    next(first)
    next(first)
    resumed = BatchStream(source, batch_size=2)
    resumed.load_state_dict(first.state_dict())
    assert all(torch.equal(next(resumed), batch) for batch in expected[2:])


def test_batches_need_one_global_batch():
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        BatchStream(_array(3), batch_size=2, num_processes=2)


def test_iterate_once_deals_every_sequence_once():
    source = _array(7)
    rows = [row[0].item() // 4 for rank in range(2) for batch in iterate_once(source, batch_size=2, process_index=rank, num_processes=2) for row in batch]
    assert sorted(rows) == list(range(7))
