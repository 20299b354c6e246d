"""Halton-MaskGIT and MaskGIT v1 loaders against the upstream reference outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mgm2fp
from mgm2fp.errors import CheckpointError, ConfigError
from mgm2fp.families.halton_maskgit import HaltonMaskGIT
from mgm2fp.families.maskgit_common import resolve_num_heads
from mgm2fp.families.maskgit_v1 import MaskGITv1
from tests.conftest import HALTON_TINY, MASKGIT_V1_TINY, populate_hub_cache, run_cli

HALTON_FILE = HALTON_TINY / "halton_h64_d6.pth"
V1_FILE = MASKGIT_V1_TINY / "maskgit_v1_h64_d6.pth"
HALTON_SIZES = {"tiny": (384, 6), "small": (512, 6), "base": (768, 12), "large": (1024, 16)}
HALTON_HEADS_BY_HIDDEN = {384: 6, 512: 6, 768: 12, 1024: 16}


def reference(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "reference_outputs.safetensors")


def inputs(outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return outputs["codes"], outputs["labels"], outputs["drop_label"]


def copy_release(source: Path, target_folder: Path, *, name: str | None = None, with_arguments: bool = True, prefix: str = "") -> Path:
    """Copy a fixture .pth (optionally renaming its keys with ``prefix``) into ``target_folder``."""
    target_folder.mkdir(parents=True, exist_ok=True)
    target = target_folder / (name or source.name)
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    checkpoint["model_state_dict"] = {prefix + key: value for key, value in checkpoint["model_state_dict"].items()}
    torch.save(checkpoint, target)
    if with_arguments:
        shutil.copyfile(source.parent / "upstream_arguments.json", target_folder / "upstream_arguments.json")
    return target


def test_halton_logits_match_reference():
    outputs = reference(HALTON_TINY)
    model = mgm2fp.load(HALTON_FILE)
    assert isinstance(model, HaltonMaskGIT)
    with torch.no_grad():
        logits = model(*inputs(outputs))
    assert logits.shape == outputs["logits"].shape
    torch.testing.assert_close(logits, outputs["logits"], atol=1e-5, rtol=0)


def test_halton_hidden_states_per_block():
    outputs = reference(HALTON_TINY)
    model = mgm2fp.load(HALTON_FILE)
    with torch.no_grad():
        states = model.hidden_states(*inputs(outputs))
    assert len(states) == outputs["hidden_states"].shape[0] == 6
    for index, (state, expected) in enumerate(zip(states, outputs["hidden_states"])):
        assert state.shape == expected.shape, f"block {index}"  # register token included
        torch.testing.assert_close(state, expected, atol=1e-5, rtol=0, msg=f"block {index}")


def test_maskgit_v1_logits_match_reference():
    outputs = reference(MASKGIT_V1_TINY)
    model = mgm2fp.load(V1_FILE)
    assert isinstance(model, MaskGITv1)
    with torch.no_grad():
        logits = model(*inputs(outputs))
    torch.testing.assert_close(logits, outputs["logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("fixture_file", [HALTON_FILE, V1_FILE], ids=["halton", "v1"])
def test_flat_codes_equal_grid_codes(fixture_file):
    outputs = reference(fixture_file.parent)
    codes, labels, drop_label = inputs(outputs)
    model = mgm2fp.load(fixture_file)
    with torch.no_grad():
        flat = model(codes.reshape(codes.shape[0], -1), labels, drop_label)
    torch.testing.assert_close(flat, outputs["logits"], atol=1e-5, rtol=0)


def test_family_sizes_and_ids():
    halton = mgm2fp.load(HALTON_FILE)
    v1 = mgm2fp.load(V1_FILE)
    assert (halton.family, v1.family) == ("halton-maskgit", "maskgit-v1")
    for model in (halton, v1):
        assert model.mask_token_id == 63
        assert model.vocab_size == 64
        assert model.hidden_size == 64
        assert model.num_blocks == 6
    assert halton.config["heads"] == v1.config["heads"] == 4
    assert halton.config["register"] == 1
    assert v1.config["nclass"] == 10


def test_dropped_label_equals_no_class_id():
    outputs = reference(HALTON_TINY)
    codes, labels, _ = inputs(outputs)
    model = mgm2fp.load(HALTON_FILE)
    with torch.no_grad():
        dropped = model(codes, labels, torch.ones_like(labels, dtype=torch.bool))
        unconditional = model(codes, None)
        conditional = model(codes, labels)
    torch.testing.assert_close(dropped, unconditional, atol=0, rtol=0)
    assert not torch.allclose(conditional, unconditional)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
@pytest.mark.parametrize("fixture_file", [HALTON_FILE, V1_FILE], ids=["halton", "v1"])
def test_wrapper_prefixes_stripped(tmp_path, prefix, fixture_file):
    copy = copy_release(fixture_file, tmp_path, prefix=prefix)
    outputs = reference(fixture_file.parent)
    model = mgm2fp.load(copy)
    with torch.no_grad():
        logits = model(*inputs(outputs))
    torch.testing.assert_close(logits, outputs["logits"], atol=1e-5, rtol=0)


def test_heads_required_without_arguments(tmp_path):
    copy = copy_release(HALTON_FILE, tmp_path, with_arguments=False)
    with pytest.raises(CheckpointError, match="num_heads"):
        mgm2fp.load(copy)
    model = mgm2fp.load(copy, num_heads=4)
    outputs = reference(HALTON_TINY)
    with torch.no_grad():
        torch.testing.assert_close(model(*inputs(outputs)), outputs["logits"], atol=1e-5, rtol=0)


def test_num_heads_overrides_arguments_file(tmp_path):
    copy = copy_release(V1_FILE, tmp_path)
    assert mgm2fp.load(copy, num_heads=2).config["heads"] == 2


def test_invalid_num_heads_rejected():
    with pytest.raises(CheckpointError, match="not divisible"):
        mgm2fp.load(HALTON_FILE, num_heads=5)


@pytest.mark.parametrize("resolution", [256, 384])
@pytest.mark.parametrize("size", list(HALTON_SIZES))
def test_halton_heads_from_size_names(tmp_path, size, resolution):
    hidden, heads = HALTON_SIZES[size]
    file = tmp_path / f"ImageNet_{resolution}_{size}.pth"
    chosen = resolve_num_heads(num_heads=None, weights_file=file, hidden=hidden, by_size_name={name: value for name, value in HALTON_SIZES.items()}, by_hidden=HALTON_HEADS_BY_HIDDEN, family="Halton-MaskGIT")
    assert chosen == heads


def test_heads_from_hidden_size_without_name(tmp_path):
    file = tmp_path / "checkpoint_last.pth"
    assert resolve_num_heads(num_heads=None, weights_file=file, hidden=768, by_size_name=HALTON_SIZES, by_hidden=HALTON_HEADS_BY_HIDDEN, family="x") == 12


def test_heads_size_name_mismatch_ignored(tmp_path, caplog):
    file = tmp_path / "ImageNet_256_tiny.pth"
    heads = resolve_num_heads(num_heads=None, weights_file=file, hidden=1024, by_size_name=HALTON_SIZES, by_hidden=HALTON_HEADS_BY_HIDDEN, family="x")
    assert heads == 16
    assert "ignoring the name" in caplog.text


def test_heads_from_arguments_file(tmp_path):
    (tmp_path / "upstream_arguments.json").write_text(json.dumps({"heads": 8}))
    assert resolve_num_heads(num_heads=None, weights_file=tmp_path / "ImageNet_256_tiny.pth", hidden=64, by_size_name=HALTON_SIZES, by_hidden={}, family="x") == 8


def test_halton_hub_file_offline(hf_home):
    files = {"halton_h64_d6.pth": HALTON_FILE, "upstream_arguments.json": HALTON_TINY / "upstream_arguments.json"}
    populate_hub_cache(hf_home, "llvictorll/Halton-MaskGIT", files)
    outputs = reference(HALTON_TINY)
    for model in (mgm2fp.load("llvictorll/Halton-MaskGIT/halton_h64_d6.pth"), mgm2fp.load("llvictorll/Halton-MaskGIT", filename="halton_h64_d6.pth")):
        assert isinstance(model, HaltonMaskGIT)
        assert model.source_revision == "0123456789abcdef0123456789abcdef01234567"
        with torch.no_grad():
            torch.testing.assert_close(model(*inputs(outputs)), outputs["logits"], atol=1e-5, rtol=0)


def test_v1_hub_subfolder_file_offline(hf_home):
    files = {"pretrained_maskgit/MaskGIT/maskgit_v1_h64_d6.pth": V1_FILE, "pretrained_maskgit/MaskGIT/upstream_arguments.json": MASKGIT_V1_TINY / "upstream_arguments.json"}
    populate_hub_cache(hf_home, "llvictorll/Maskgit-pytorch", files)
    model = mgm2fp.load("llvictorll/Maskgit-pytorch/pretrained_maskgit/MaskGIT/maskgit_v1_h64_d6.pth")
    assert isinstance(model, MaskGITv1)


def test_trainer_state_ignored_and_bare_state_dict(tmp_path):
    state = torch.load(HALTON_FILE, map_location="cpu", weights_only=True)["model_state_dict"]
    torch.save(state, tmp_path / "bare.pth")
    shutil.copyfile(HALTON_TINY / "upstream_arguments.json", tmp_path / "upstream_arguments.json")
    outputs = reference(HALTON_TINY)
    with torch.no_grad():
        torch.testing.assert_close(mgm2fp.load(tmp_path / "bare.pth")(*inputs(outputs)), outputs["logits"], atol=1e-5, rtol=0)


def test_codes_of_wrong_size_rejected():
    model = mgm2fp.load(HALTON_FILE)
    with pytest.raises(ConfigError, match="16 tokens"):
        model(torch.zeros(2, 5, 5, dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_v1_num_classes_split(tmp_path):
    copy = copy_release(V1_FILE, tmp_path, with_arguments=False)
    model = mgm2fp.load(copy, num_heads=4, num_classes=10)
    assert (model.config["codebook_size"], model.config["nclass"]) == (63, 10)
    with pytest.raises(CheckpointError, match="too few"):
        mgm2fp.load(copy, num_heads=4, num_classes=80)


def test_inspect_cli_halton(tmp_path, capsys):
    copy = copy_release(HALTON_FILE, tmp_path, with_arguments=False)
    code, out, err = run_cli(["inspect", copy, "--num-heads", "4"], capsys)
    assert code == 0, err
    assert "halton-maskgit" in out
    assert "mask token id" in out
