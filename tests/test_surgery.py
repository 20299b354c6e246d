"""Surgery: layer plans, init rules, injections, parameter counts, save and load."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import mgm2fp
from mgm2fp.errors import LayerPlanError, OutputExistsError
from mgm2fp.fixed_point.model import FixedPointMGM
from mgm2fp.families.mdlm import MDLMDiT
from mgm2fp.layer_plan import format_range, make_plan, parse_layers
from conftest import MDLM_TINY

REFERENCE = load_file(str(MDLM_TINY / "reference_outputs.safetensors"))
TOKENS = REFERENCE["input_ids"]


@pytest.fixture(scope="module")
def source() -> MDLMDiT:
    return mgm2fp.load(MDLM_TINY)


@pytest.mark.parametrize("index", range(6))
def test_one_block_range_reproduces_source(source, index):
    converted = mgm2fp.convert(source, share_layers=f"{index}-{index}", injection="add")
    with torch.no_grad():
        expected = source(TOKENS)
        logits = converted(TOKENS, num_iterations=1)
    assert torch.equal(logits, expected)


def test_fpdm_injection_starts_as_identity(source):
    converted = mgm2fp.convert(source, share_layers="3-3", injection="fpdm")
    with torch.no_grad():
        torch.testing.assert_close(converted(TOKENS, num_iterations=1), source(TOKENS), atol=1e-5, rtol=0)


def test_source_left_unchanged(source):
    before = {name: tensor.clone() for name, tensor in source.state_dict().items()}
    mgm2fp.convert(source, share_layers="1-4")
    assert source.num_blocks == 6
    for name, tensor in source.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_share_layers_plan(source):
    converted = mgm2fp.convert(source, share_layers="1-3")
    assert converted.plan.pre == (0,)
    assert converted.plan.fixed_point == (1, 2, 3)
    assert converted.plan.post == (4, 5)
    assert len(converted.pre_blocks) == 1
    assert len(converted.post_blocks) == 2
    assert converted.num_iterations == 3
    assert converted.cost_per_step() == 6
    assert converted.cost_per_step(5) == 8


def test_explicit_plan_drops_other_blocks(source):
    converted = mgm2fp.convert(source, pre_layers="0", fixed_point_layers="2", post_layers="5")
    assert converted.num_blocks == 3
    state = converted.state_dict()
    for position, index in (("pre_blocks.0", 0), ("fixed_point_block.layers.0", 2), ("post_blocks.0", 5)):
        assert torch.equal(state[f"{position}.attn_qkv.weight"], source.blocks[index].attn_qkv.weight)


@pytest.mark.parametrize(("init", "expected"), [("first", 1), ("middle", 2), ("last", 4), (3, 3)])
def test_init_picks_block(source, init, expected):
    converted = mgm2fp.convert(source, share_layers="1-4", init=init)
    shared = converted.fixed_point_block.layers[0]
    assert torch.equal(shared.attn_qkv.weight, source.blocks[expected].attn_qkv.weight)


def test_init_mean_averages_range(source):
    converted = mgm2fp.convert(source, share_layers="1-4", init="mean")
    expected = torch.stack([source.blocks[index].mlp[0].weight for index in range(1, 5)]).mean(0)
    torch.testing.assert_close(converted.fixed_point_block.layers[0].mlp[0].weight, expected)


def test_streamed_conversion_matches_in_memory(source):
    streamed = mgm2fp.convert(MDLM_TINY, share_layers="2-4", init="last", injection="add")
    in_memory = mgm2fp.convert(source, share_layers="2-4", init="last", injection="add")
    for name, tensor in in_memory.state_dict().items():
        assert torch.equal(streamed.state_dict()[name], tensor), name


def test_solution_returned_for_warm_start(source):
    converted = mgm2fp.convert(source, share_layers="1-4")
    with torch.no_grad():
        output = converted.forward_with_state(TOKENS, num_iterations=3)
        warm = converted.forward_with_state(TOKENS, num_iterations=1, initial_state=output.solution)
    assert output.solution.shape == (3, 32, 64)
    assert output.solver.iterations == 3
    assert not torch.equal(warm.solution, output.h_pre)


def test_paper_mapping_parameter_count_at_mdlm_owt_sizes():
    config = {"hidden_dim": 768, "cond_dim": 128, "n_blocks": 12, "n_heads": 12, "vocab_size": 50258, "time_conditioning": False}
    with torch.device("meta"):
        full = MDLMDiT(config)
        full_parameters = full.num_parameters()
        converted = mgm2fp.convert(full, pre_layers="0", fixed_point_layers="5", post_layers="11", injection="fpdm")
    assert full_parameters == 169_627_218
    assert 103_000_000 < converted.num_parameters() < 106_000_000
    assert converted.num_parameters() < 0.65 * full_parameters


def test_save_and_load_bitwise(source, tmp_path):
    converted = mgm2fp.convert(source, share_layers="2-4", init="mean")
    with torch.no_grad():
        converted.fixed_point_block.injection.fc1.weight.add_(0.01)
    mgm2fp.save_pretrained(converted, tmp_path / "fp")
    reloaded = mgm2fp.load(tmp_path / "fp")
    assert isinstance(reloaded, FixedPointMGM)
    with torch.no_grad():
        for iterations in (1, 3, 7):
            assert torch.equal(converted(TOKENS, num_iterations=iterations), reloaded(TOKENS, num_iterations=iterations))


def test_saved_config_and_card(source, tmp_path):
    converted = mgm2fp.convert(MDLM_TINY, pre_layers="0", fixed_point_layers="3", post_layers="5")
    mgm2fp.save_pretrained(converted, tmp_path / "fp")
    config = json.loads((tmp_path / "fp" / "config.json").read_text())
    assert config["model_type"] == "mgm2fp"
    assert config["family"] == "mdlm"
    assert config["source_config"]["n_blocks"] == 6
    assert config["layer_plan"]["fixed_point"] == [3]
    assert config["injection"] == "fpdm"
    assert config["num_iterations"] == 4
    assert config["source"]["num_parameters"] == source.num_parameters()
    card = (tmp_path / "fp" / "README.md").read_text()
    assert "library_name: mgm2fp" in card
    assert "fixed-point" in card
    assert "mgm2fp.load" in card
    assert f"{source.num_parameters():,}" in card


def test_save_refuses_existing_folder(source, tmp_path):
    converted = mgm2fp.convert(source, share_layers="2-2")
    (tmp_path / "fp").mkdir()
    with pytest.raises(OutputExistsError):
        mgm2fp.save_pretrained(converted, tmp_path / "fp")
    mgm2fp.save_pretrained(converted, tmp_path / "fp", overwrite=True)
    assert (tmp_path / "fp" / "model.safetensors").is_file()
    assert [path.name for path in tmp_path.iterdir()] == ["fp"]


@pytest.mark.parametrize(
    ("text", "message"),
    [("4-2", "reversed"), ("2-9", "out of range"), ("a-b", "invalid"), ("1-", "invalid"), ("3,3", "twice")],
)
def test_parse_layers_rejects(text, message):
    with pytest.raises(LayerPlanError, match=message):
        parse_layers(text, name="share_layers", num_blocks=6)


def test_explicit_plan_order_checked():
    with pytest.raises(LayerPlanError, match="before"):
        make_plan(6, pre_layers="3", fixed_point_layers="2", post_layers="5")
    with pytest.raises(LayerPlanError, match="after"):
        make_plan(6, pre_layers="0", fixed_point_layers="3", post_layers="2")
    with pytest.raises(LayerPlanError, match="not both"):
        make_plan(6, share_layers="1-2", fixed_point_layers="3")


def test_format_range():
    assert format_range((0, 1, 2, 5, 7, 8)) == "0-2,5,7-8"
    assert format_range(()) == "-"
