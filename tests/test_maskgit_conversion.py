"""Conversion of MaskGIT-family models: surgery, exact reproduction, presets, save and load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import mgm2fp
from mgm2fp.errors import LayerPlanError
from mgm2fp.families.halton_maskgit import HaltonMaskGIT
from mgm2fp.fixed_point.model import FixedPointMGM
from tests.conftest import HALTON_TINY, MASKGIT_V1_TINY, run_cli

FIXTURES = {"halton": HALTON_TINY / "halton_h64_d6.pth", "v1": MASKGIT_V1_TINY / "maskgit_v1_h64_d6.pth"}


def reference_inputs(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    outputs = load_file(FIXTURES[name].parent / "reference_outputs.safetensors")
    return outputs["codes"], outputs["labels"], outputs["drop_label"]


@pytest.fixture(scope="module", params=["halton", "v1"])
def family_case(request) -> tuple[str, torch.nn.Module]:
    return request.param, mgm2fp.load(FIXTURES[request.param])


def halton_release_file(folder: Path, depth: int, *, seed: int = 0) -> Path:
    """Write a random Halton-MaskGIT release of ``depth`` blocks in the upstream key layout."""
    torch.manual_seed(seed)
    config = {"model_type": "halton-maskgit", "input_size": 2, "hidden_dim": 32, "codebook_size": 15, "nclass": 3, "depth": depth, "heads": 2, "ffn_dim": 64, "register": 1}
    model = HaltonMaskGIT(config)
    state = {}
    for key, tensor in model.state_dict().items():
        if key == "output_bias":
            state["head.bias"] = torch.randn_like(tensor)
            continue
        state[re.sub(r"^blocks\.", "transformer.layers.", key)] = torch.randn_like(tensor) * 0.1
    state["head.weight"] = state["tok_emb.weight"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"halton_d{depth}.pth"
    torch.save({"iter": 1, "model_state_dict": state}, path)
    (folder / "upstream_arguments.json").write_text('{"heads": 2}')
    return path


def test_share_layers_plan(family_case):
    name, model = family_case
    converted = mgm2fp.convert(model, share_layers="1-4")
    assert isinstance(converted, FixedPointMGM)
    assert converted.plan.pre == (0,)
    assert converted.plan.fixed_point == (1, 2, 3, 4)
    assert converted.plan.post == (5,)
    assert converted.num_iterations == 4
    assert converted.num_parameters() < model.num_parameters()
    with torch.no_grad():
        logits = converted(*reference_inputs(name), num_iterations=2)
    assert logits.shape == (reference_inputs(name)[0].shape[0], 16, 64)
    assert torch.isfinite(logits).all()


def test_explicit_plan(family_case):
    name, model = family_case
    converted = mgm2fp.convert(model, pre_layers="0", fixed_point_layers="2-3", post_layers="5", init="mean")
    assert converted.num_blocks == 3
    assert converted.cost_per_step(num_iterations=3) == 5


def test_additive_one_block_reproduces_source(family_case):
    name, model = family_case
    arguments = reference_inputs(name)
    converted = mgm2fp.convert(model, pre_layers="0-2", fixed_point_layers="3", post_layers="4-5", injection="add")
    with torch.no_grad():
        expected = model(*arguments)
        converted.block_calls.reset()
        logits = converted(*arguments, num_iterations=1)
    assert converted.block_calls.count == 6
    torch.testing.assert_close(logits, expected, atol=0, rtol=0)


def test_save_load_bitwise(family_case, tmp_path):
    name, model = family_case
    arguments = reference_inputs(name)
    converted = mgm2fp.convert(model, share_layers="2-3", injection="fpdm")
    mgm2fp.save_pretrained(converted, tmp_path / "fp")
    loaded = mgm2fp.load(tmp_path / "fp")
    assert loaded.source_family == model.family
    assert loaded.num_parameters() == converted.num_parameters()
    for key, tensor in converted.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    with torch.no_grad():
        torch.testing.assert_close(loaded(*arguments, num_iterations=3), converted(*arguments, num_iterations=3), atol=0, rtol=0)


def test_halton_head_tie_survives_saving(tmp_path):
    model = mgm2fp.load(FIXTURES["halton"])
    converted = mgm2fp.convert(model, share_layers="1-4")
    mgm2fp.save_pretrained(converted, tmp_path / "fp")
    with safe_open(str(tmp_path / "fp" / "model.safetensors"), framework="pt") as file:
        keys = set(file.keys())
    assert "base.tok_emb.weight" in keys
    assert "base.output_bias" in keys
    assert not any("head" in key for key in keys)

    loaded = mgm2fp.load(tmp_path / "fp")
    codes, labels, drop_label = reference_inputs("halton")
    unused = next(code for code in range(loaded.vocab_size) if not (codes == code).any())
    with torch.no_grad():
        before = loaded(codes, labels, drop_label, num_iterations=1)
        loaded.base.tok_emb.weight[unused] += 1.0  # no input embeds this code, only the head reads it
        after = loaded(codes, labels, drop_label, num_iterations=1)
    difference = (after - before).abs()  # [B, N, V]
    assert difference[..., unused].min() > 0
    others = torch.arange(loaded.vocab_size) != unused
    assert difference[..., others].max() == 0


def test_convert_by_path_streams(tmp_path):
    converted = mgm2fp.convert(FIXTURES["halton"], share_layers="2-3")
    in_memory = mgm2fp.convert(mgm2fp.load(FIXTURES["halton"]), share_layers="2-3")
    arguments = reference_inputs("halton")
    with torch.no_grad():
        torch.testing.assert_close(converted(*arguments), in_memory(*arguments), atol=0, rtol=0)


def test_fp_maskgit_preset_plan():
    plan = mgm2fp.make_plan(24, preset="fp-maskgit")
    assert plan.pre == (0, 1, 2, 3)
    assert plan.fixed_point == tuple(range(4, 20))
    assert plan.post == (20, 21, 22, 23)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_blocks": 8, "preset": "fp-maskgit"}, "at least 9 blocks"),
        ({"num_blocks": 24, "preset": "fp-mdlm-large"}, "unknown layer plan preset"),
        ({"num_blocks": 24, "preset": "fp-maskgit", "share_layers": "4-19"}, "not both"),
        ({"num_blocks": 24, "preset": "fp-maskgit", "fixed_point_layers": "5"}, "not both"),
    ],
)
def test_preset_errors(options, message):
    num_blocks = options.pop("num_blocks")
    with pytest.raises(LayerPlanError, match=message):
        mgm2fp.make_plan(num_blocks, **options)


def test_preset_and_plan_rejected():
    model = mgm2fp.load(FIXTURES["halton"])
    with pytest.raises(LayerPlanError, match="not both"):
        mgm2fp.convert(model, plan=mgm2fp.make_plan(6, share_layers="1-4"), preset="fp-maskgit")


def test_preset_convert_cli(tmp_path, capsys):
    source = halton_release_file(tmp_path / "release", depth=10)
    code, out, err = run_cli(["convert", source, "--preset", "fp-maskgit", "--output", tmp_path / "fp"], capsys)
    assert code == 0, err
    loaded = mgm2fp.load(tmp_path / "fp")
    assert loaded.plan.pre == (0, 1, 2, 3)
    assert loaded.plan.fixed_point == (4, 5)
    assert loaded.plan.post == (6, 7, 8, 9)
    assert loaded.cost_per_step() == 10
    assert "halton-maskgit" in (tmp_path / "fp" / "README.md").read_text()


def test_preset_too_shallow_cli(tmp_path, capsys):
    code, out, err = run_cli(["convert", FIXTURES["halton"], "--preset", "fp-maskgit", "--output", tmp_path / "fp"], capsys)
    assert code == 1
    assert "at least 9 blocks" in err
    assert not (tmp_path / "fp").exists()


def test_random_release_round_trip(tmp_path):
    path = halton_release_file(tmp_path, depth=3, seed=1)
    model = mgm2fp.load(path)
    release = torch.load(path, map_location="cpu", weights_only=True)["model_state_dict"]
    assert torch.equal(model.tok_emb.weight, release["tok_emb.weight"])
    assert torch.equal(model.output_bias, release["head.bias"])
    assert torch.equal(model.blocks[2].ff.w2.weight, release["transformer.layers.2.ff.w2.weight"])
