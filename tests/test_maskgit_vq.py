"""VQ decoders (LlamaGen and taming-transformers layouts) with tiny random configurations, and PNG grids."""

from __future__ import annotations

import numpy
import pytest
import torch
from PIL import Image

from mgm2fp.errors import CheckpointError, ConfigError
from mgm2fp.images import decode_tokens, make_grid, save_image_grid
from mgm2fp.vq import LLAMAGEN_VQ_DS16_C2I, TAMING_VQGAN_F16_1024, LlamaGenVQDecoder, TamingVQGANDecoder, VQDecoderConfig, load_vq_decoder
from mgm2fp.vq.loading import infer_vq_config

# Two levels (f2), 32 and 64 channels, attention at the lower resolution.
TINY = {"codebook_size": 12, "embed_dim": 4, "z_channels": 8, "channels": 32, "channel_multipliers": (1, 2), "num_res_blocks": 1, "attention_levels": (1,)}
KINDS = {"llamagen": (LlamaGenVQDecoder, True, "model"), "taming": (TamingVQGANDecoder, False, "state_dict")}


def tiny_decoder(kind: str, seed: int = 0) -> torch.nn.Module:
    decoder_class, l2_normalize, _ = KINDS[kind]
    torch.manual_seed(seed)
    decoder = decoder_class(VQDecoderConfig(**TINY, l2_normalize_codebook=l2_normalize)).eval()
    with torch.no_grad():
        for parameter in decoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return decoder


def write_release(decoder: torch.nn.Module, kind: str, path) -> None:
    """Save ``decoder`` as its release does, with encoder and trainer entries that loading must skip."""
    state = dict(decoder.state_dict())
    state["encoder.conv_in.weight"] = torch.zeros(32, 3, 3, 3)
    state["quant_conv.weight"] = torch.zeros(4, 8, 1, 1)
    if kind == "llamagen":
        state["quantize.codebook_used"] = torch.zeros(65536)
    else:
        state["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    torch.save({KINDS[kind][2]: state, "epoch": 7}, path)


@pytest.mark.parametrize("kind", list(KINDS))
def test_decode_shape_and_range(kind):
    decoder = tiny_decoder(kind)
    codes = torch.randint(0, 12, (3, 4, 4))
    raw = decoder(codes)
    images = decoder.decode(codes)
    assert raw.shape == images.shape == (3, 3, 8, 8)
    assert images.min() >= 0.0
    assert images.max() <= 1.0
    torch.testing.assert_close(images, (raw.clamp(-1, 1) + 1) / 2)
    torch.testing.assert_close(decoder.decode(codes.reshape(3, 16)), images)


@pytest.mark.parametrize("kind", list(KINDS))
def test_release_round_trip(kind, tmp_path):
    decoder = tiny_decoder(kind, seed=3)
    path = tmp_path / "tokenizer.pt"
    write_release(decoder, kind, path)
    loaded = load_vq_decoder(path)
    assert type(loaded) is type(decoder)
    assert loaded.config == decoder.config
    codes = torch.randint(0, 12, (2, 3, 3))
    torch.testing.assert_close(loaded.decode(codes), decoder.decode(codes), atol=0, rtol=0)


def test_kind_mismatch_rejected(tmp_path):
    path = tmp_path / "tokenizer.pt"
    write_release(tiny_decoder("taming"), "taming", path)
    with pytest.raises(CheckpointError, match="taming decoder layout, not llamagen"):
        load_vq_decoder(path, kind="llamagen")


def test_llamagen_codebook_is_normalised():
    decoder = tiny_decoder("llamagen")
    codes = torch.randint(0, 12, (2, 3, 3))
    before = decoder.decode(codes)
    with torch.no_grad():
        decoder.quantize.embedding.weight.mul_(3.0)
    torch.testing.assert_close(decoder.decode(codes), before, atol=1e-5, rtol=0)

    taming = tiny_decoder("taming")
    before = taming(codes)
    with torch.no_grad():
        taming.quantize.embedding.weight.mul_(3.0)
    assert not torch.allclose(taming(codes), before)


def test_codes_outside_codebook_rejected():
    decoder = tiny_decoder("taming")
    with pytest.raises(ConfigError, match="0..11"):
        decoder.decode(torch.full((1, 2, 2), 12))


@pytest.mark.parametrize("kind", list(KINDS))
def test_released_configs_infer_back(kind):
    config = LLAMAGEN_VQ_DS16_C2I if kind == "llamagen" else TAMING_VQGAN_F16_1024
    with torch.device("meta"):
        decoder = KINDS[kind][0](config)
    assert config.downsampling_factor == 16
    assert infer_vq_config(decoder.state_dict(), kind) == config


def test_image_grid_png(tmp_path):
    images = torch.rand(5, 3, 8, 8)
    path = save_image_grid(images, tmp_path / "grids" / "samples.png", nrow=3)
    with Image.open(path) as picture:
        assert picture.size == (3 * 10 + 2, 2 * 10 + 2)
        assert picture.mode == "RGB"
        pixel = picture.getpixel((2, 2))
    assert pixel == tuple(int(value) for value in (images[0, :, 0, 0] * 255).round())
    assert not list((tmp_path / "grids").glob(".*"))


def test_grid_rejects_bad_shape():
    with pytest.raises(ConfigError, match="non-empty batch"):
        make_grid(torch.rand(3, 8, 8))


def test_decode_tokens_batches():
    decoder = tiny_decoder("llamagen")
    codes = torch.randint(0, 12, (5, 2, 2))
    torch.testing.assert_close(decode_tokens(decoder, codes, batch_size=2), decoder.decode(codes))


def test_decode_cli_writes_grid(tmp_path, capsys):
    from safetensors.torch import save_file

    from tests.conftest import run_cli

    decoder = tiny_decoder("taming", seed=5)
    write_release(decoder, "taming", tmp_path / "last.ckpt")
    codes = torch.randint(0, 12, (4, 3, 3))
    save_file({"codes": codes}, str(tmp_path / "tokens.safetensors"))
    code, out, err = run_cli(["decode", tmp_path / "tokens.safetensors", "--tokenizer", tmp_path / "last.ckpt", "--output", tmp_path / "grid.png", "--nrow", "2"], capsys)
    assert code == 0, err
    assert "4 images of 6x6 pixels" in " ".join(out.split())
    with Image.open(tmp_path / "grid.png") as picture:
        written = torch.from_numpy(numpy.asarray(picture).copy())  # [H, W, 3]
    expected = make_grid(decoder.decode(codes), nrow=2).permute(1, 2, 0)
    assert torch.equal(written, expected)


def test_decode_cli_missing_key(tmp_path, capsys):
    from safetensors.torch import save_file

    from tests.conftest import run_cli

    write_release(tiny_decoder("llamagen"), "llamagen", tmp_path / "vq.pt")
    save_file({"tokens": torch.zeros(1, 2, 2, dtype=torch.long)}, str(tmp_path / "tokens.safetensors"))
    code, out, err = run_cli(["decode", tmp_path / "tokens.safetensors", "--tokenizer", tmp_path / "vq.pt"], capsys)
    assert code == 1
    assert "no tensor 'codes'" in err
