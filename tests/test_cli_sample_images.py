"""``mgm2fp sample`` for MaskGIT models: class labels, guidance, and PNG grids decoded with a tiny random VQ decoder."""

from __future__ import annotations

import json

import numpy
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import mgm2fp
from mgm2fp.images import make_grid
from mgm2fp.vq import TamingVQGANDecoder, VQDecoderConfig
from tests.conftest import HALTON_TINY, MASKGIT_V1_TINY, MDLM_TINY, run_cli

HALTON = HALTON_TINY / "halton_h64_d6.pth"
MASK = 63


def read_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_tiny_vq(path, codebook_size: int = 63) -> TamingVQGANDecoder:
    """Write a random taming-layout VQ decoder (f2: a 4 x 4 grid decodes to 8 x 8 pixels) as safetensors."""
    torch.manual_seed(0)
    config = VQDecoderConfig(codebook_size=codebook_size, embed_dim=4, z_channels=8, channels=32, channel_multipliers=(1, 2), num_res_blocks=1, attention_levels=(1,), l2_normalize_codebook=False)
    decoder = TamingVQGANDecoder(config).eval()
    with torch.no_grad():
        for parameter in decoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    save_file({key: tensor.contiguous() for key, tensor in decoder.state_dict().items()}, str(path))
    return decoder


def test_sample_decode_writes_grid(tmp_path, capsys):
    decoder = write_tiny_vq(tmp_path / "vq.safetensors")
    output = tmp_path / "samples.jsonl"
    args = ["sample", HALTON, "--budget", "24", "--num-samples", "4", "--labels", "1,2", "--cfg-weight", "2", "--decode", "--vq", tmp_path / "vq.safetensors", "--output", output]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    records = read_records(output)
    assert [record["label"] for record in records] == [1, 2, 1, 2]
    for record in records:
        assert len(record["tokens"]) == 16
        assert MASK not in record["tokens"]
        assert record["text"] is None
        assert record["block_forward_passes"] == 24
        assert record["family"] == "halton-maskgit"
    assert "4 images of 8x8 pixels" in " ".join(out.split())
    with Image.open(tmp_path / "samples.png") as picture:
        written = torch.from_numpy(numpy.asarray(picture).copy())  # [H, W, 3]
    codes = torch.tensor([record["tokens"] for record in records])
    expected = make_grid(decoder.decode(codes)).permute(1, 2, 0)
    assert torch.equal(written, expected)


def test_sample_converted_image_model(tmp_path, capsys):
    folder = tmp_path / "fp"
    mgm2fp.save_pretrained(mgm2fp.convert(MASKGIT_V1_TINY / "maskgit_v1_h64_d6.pth", share_layers="1-4"), folder)
    output = tmp_path / "samples.jsonl"
    args = ["sample", folder, "--budget", "40", "--steps", "4", "--schedule", "fixed", "--num-samples", "3", "--batch-size", "2", "--labels", "random", "--cfg-weight", "1", "--cfg-ramp", "constant", "--order", "halton", "--reveal-schedule", "cosine", "--output", output]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    records = read_records(output)
    assert len(records) == 3
    for record in records:
        assert record["iterations"] == [8, 8, 8, 8]
        assert record["block_forward_passes"] == 40
        assert record["reuse"] == "3sr"
        assert 0 <= record["label"] < 10
        assert MASK not in record["tokens"]


def test_sample_labels_are_deterministic(tmp_path, capsys):
    outputs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for output in outputs:
        code, _, err = run_cli(["sample", HALTON, "--steps", "3", "--num-samples", "3", "--labels", "random", "--order", "confidence", "--gumbel-temperature", "2", "--seed", "4", "--output", output], capsys)
        assert code == 0, err
    assert outputs[0].read_text() == outputs[1].read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seq-len", "32"], "seq_len=32 does not fit the model's 4x4 token grid"),
        (["--decode"], "--decode needs the VQ tokenizer weights; pass --vq"),
        (["--vq", "vq.safetensors"], "--vq only applies with --decode"),
        (["--decode", "--vq", "vq.safetensors", "--output", "grid.png"], "would be overwritten by the PNG grid"),
        (["--labels", "1,x"], "--labels '1,x' is invalid"),
        (["--labels", "12"], "class id 12 is out of range"),
        (["--cfg-weight", "2"], "needs class labels"),
        (["--top-p", "0.9"], "option top_p does not apply to the halton-maskgit sampler"),
    ],
)
def test_sample_image_errors(tmp_path, capsys, extra, message):
    code, _, err = run_cli(["sample", HALTON, "--steps", "2", "--output", tmp_path / "samples.jsonl", *extra], capsys)
    assert code == 1
    assert message in " ".join(err.split())
    assert not (tmp_path / "samples.jsonl").exists()


def test_sample_decode_rejects_other_codebook(tmp_path, capsys):
    write_tiny_vq(tmp_path / "vq.safetensors", codebook_size=12)
    code, _, err = run_cli(["sample", HALTON, "--steps", "2", "--decode", "--vq", tmp_path / "vq.safetensors", "--output", tmp_path / "samples.jsonl"], capsys)
    assert code == 1
    assert "has 12 codes but the model's codebook has 63" in " ".join(err.split())


def test_sample_decode_rejects_text_model(tmp_path, capsys):
    write_tiny_vq(tmp_path / "vq.safetensors")
    code, _, err = run_cli(["sample", MDLM_TINY, "--steps", "2", "--decode", "--vq", tmp_path / "vq.safetensors", "--output", tmp_path / "samples.jsonl"], capsys)
    assert code == 1
    assert "is a text model" in " ".join(err.split())


def test_sample_labels_rejected_for_text_model(tmp_path, capsys):
    code, _, err = run_cli(["sample", MDLM_TINY, "--steps", "2", "--seq-len", "8", "--labels", "1", "--tokenizer", "none", "--output", tmp_path / "samples.jsonl"], capsys)
    assert code == 1
    assert "option labels does not apply to the mdlm sampler" in " ".join(err.split())


def test_sample_decode_keeps_existing_image(tmp_path, capsys):
    write_tiny_vq(tmp_path / "vq.safetensors")
    (tmp_path / "samples.png").write_bytes(b"keep")
    code, _, err = run_cli(["sample", HALTON, "--steps", "2", "--decode", "--vq", tmp_path / "vq.safetensors", "--output", tmp_path / "samples.jsonl"], capsys)
    assert code == 1
    assert (tmp_path / "samples.png").read_bytes() == b"keep"
    assert not (tmp_path / "samples.jsonl").exists()
