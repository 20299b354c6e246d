"""MaskGIT sampling: budget accounting with forward hooks, guidance, orders, schedules, reuse on grids, determinism."""

from __future__ import annotations

import math

import numpy
import pytest
import torch

import mgm2fp
from mgm2fp.errors import ConfigError
from mgm2fp.sampling import sample_in_batches, three_state_gamma
from mgm2fp.sampling.maskgit import guidance_weights, guided_logits, halton_order, masked_fraction, radical_inverse, resolve_labels, reveal_counts
from tests.conftest import HALTON_TINY, MASKGIT_V1_TINY

MASK = 63  # both tiny fixtures: codebook 63, so the mask code is 63
CELLS = 16  # 4 x 4 grids
FILES = {"halton": HALTON_TINY / "halton_h64_d6.pth", "v1": MASKGIT_V1_TINY / "maskgit_v1_h64_d6.pth"}


@pytest.fixture(scope="module", params=list(FILES))
def models(request):
    """The source model of one family and its conversion (1 pre block, blocks 1-4 shared, 1 post block)."""
    source = mgm2fp.load(FILES[request.param])
    return {"source": source, "fixed_point": mgm2fp.convert(source, share_layers="1-4")}


@pytest.fixture
def source(models):
    return models["source"]


@pytest.fixture
def fixed_point(models):
    return models["fixed_point"]


@pytest.fixture(scope="module")
def halton_source():
    return mgm2fp.load(FILES["halton"])


def block_modules(model):
    if isinstance(model, mgm2fp.FixedPointMGM):
        return [*model.pre_blocks, *model.fixed_point_block.layers, *model.post_blocks]
    return list(model.blocks)


class HookCounter:
    """Count block calls and record their batch sizes with forward hooks, apart from the model's own counter."""

    def __init__(self, model):
        self.count = 0
        self.batch_sizes = set()
        self.handles = [block.register_forward_hook(self.hook) for block in block_modules(model)]

    def hook(self, module, inputs, output):
        self.count += 1
        self.batch_sizes.add(inputs[0].shape[0])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def input_grids(model, **kwargs):
    """Sample with a source model and return the result and the codes fed to every forward pass."""
    seen = []
    handle = model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    try:
        result = mgm2fp.sample(model, **kwargs)
    finally:
        handle.remove()
    return result, seen


# Budget accounting ------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg_weight", [0.0, 2.0])
@pytest.mark.parametrize("reuse", ["none", "full", "3sr"])
@pytest.mark.parametrize("kind", ["source", "fixed_point"])
def test_budget_matches_hooks(models, kind, reuse, cfg_weight):
    model = models[kind]
    for budget in (6, 23, 48):
        with HookCounter(model) as counter:
            result = mgm2fp.sample(model, 3, budget=budget, labels=[0, 1, 2], cfg_weight=cfg_weight, reuse=reuse)
        assert result.block_forward_passes == counter.count
        assert result.block_forward_passes <= budget
        assert sum(step.block_forward_passes for step in result.steps) == counter.count


@pytest.mark.parametrize("kind", ["source", "fixed_point"])
def test_guided_batch_counts_once(models, kind):
    model = models[kind]
    with HookCounter(model) as plain_counter:
        plain = mgm2fp.sample(model, 3, budget=24, labels=[0, 1, 2])
    with HookCounter(model) as guided_counter:
        guided = mgm2fp.sample(model, 3, budget=24, labels=[0, 1, 2], cfg_weight=3.0)
    assert plain_counter.batch_sizes == {3}
    assert guided_counter.batch_sizes == {6}  # conditional and unconditional rows in one call
    assert guided.block_forward_passes == plain.block_forward_passes == guided_counter.count == plain_counter.count
    assert guided.num_steps == plain.num_steps


def test_fixed_point_step_costs(fixed_point):
    with HookCounter(fixed_point) as counter:
        result = mgm2fp.sample(fixed_point, 2, budget=48, labels=3, cfg_weight=1.0, reuse="3sr")
    assert counter.count == 48
    assert result.iterations == list(result.plan.iterations)
    for step in result.steps:
        assert step.block_forward_passes == 1 + step.iterations + 1
    assert [step.warm_start for step in result.steps] == [False] + [True] * (result.num_steps - 1)


def test_steps_beyond_cells_spend_nothing(halton_source):
    with HookCounter(halton_source) as counter:
        result = mgm2fp.sample(halton_source, 2, steps=20)
    skipped = [step for step in result.steps if step.skipped]
    assert len(skipped) == 20 - CELLS
    assert all(step.block_forward_passes == 0 for step in skipped)
    assert counter.count == 6 * CELLS
    assert not bool((result.tokens == MASK).any())


# Finished samples, orders and schedules ---------------------------------------------------------


@pytest.mark.parametrize("order", ["halton", "confidence"])
@pytest.mark.parametrize("kind", ["source", "fixed_point"])
def test_finished_samples_have_no_mask(models, kind, order):
    model = models[kind]
    for steps in (1, 3, 16):
        result = mgm2fp.sample(model, 4, steps=steps, order=order, labels="random")
        assert result.tokens.shape == (4, CELLS)
        assert result.tokens.dtype == torch.long
        assert not bool((result.tokens == MASK).any())
        assert sum(step.revealed for step in result.steps) == 4 * CELLS


def test_halton_order_is_permutation():
    for grid in (1, 2, 4, 7, 16, 32):
        order = halton_order(grid)
        assert order.shape == (grid * grid,)
        assert sorted(order.tolist()) == list(range(grid * grid))


def test_halton_order_starts_spread():
    # Halton points 0..3 in bases 2 and 3: (0, 0), (1/2, 1/3), (1/4, 2/3), (3/4, 1/9).
    assert radical_inverse(6, 2) == pytest.approx(0.375)
    assert radical_inverse(5, 3) == pytest.approx(7 / 9)
    assert halton_order(4)[:4].tolist() == [0 * 4 + 0, 1 * 4 + 2, 2 * 4 + 1, 0 * 4 + 3]
    first_quarter = halton_order(8)[:16]
    quadrants = {(int(cell) // 8 // 4, int(cell) % 8 // 4) for cell in first_quarter}
    assert quadrants == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_halton_sampler_follows_order(halton_source):
    result, grids = input_grids(halton_source, num_samples=2, steps=5, order="halton")
    order = halton_order(4).tolist()
    counts = reveal_counts(CELLS, 5, "arccos")
    visible_before = 0
    for step, codes in enumerate([*grids[1:], result.tokens]):
        visible = (codes.reshape(2, -1) != MASK)[0].nonzero().flatten().tolist()
        assert sorted(visible) == sorted(order[: visible_before + counts[step]])
        visible_before += counts[step]


@pytest.mark.parametrize("order", ["halton", "confidence"])
def test_reveals_are_monotonic(source, order):
    result, grids = input_grids(source, num_samples=3, steps=6, order=order, labels=[1, 2, 3], cfg_weight=1.5)
    counts = reveal_counts(CELLS, 6, "arccos")
    states = [grid.reshape(grid.shape[0], -1)[:3] for grid in grids] + [result.tokens]  # the conditional rows
    for step, (before, after) in enumerate(zip(states, states[1:])):
        visible = before != MASK
        assert torch.equal(after[visible], before[visible])
        assert ((after != MASK).sum(dim=1) - visible.sum(dim=1)).tolist() == [counts[step]] * 3


@pytest.mark.parametrize("schedule", ["arccos", "cosine"])
def test_reveal_counts_cover_grid(schedule):
    for cells, steps in ((16, 1), (16, 4), (16, 16), (64, 8), (256, 12), (16, 20)):
        counts = reveal_counts(cells, steps, schedule)
        assert len(counts) == steps
        assert sum(counts) == cells
        assert min(counts) >= (1 if steps <= cells else 0)


def test_reveal_schedules_differ():
    assert masked_fraction(0.0, "arccos") == pytest.approx(1.0)
    assert masked_fraction(1.0, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert masked_fraction(0.5, "arccos") == pytest.approx(2 / 3)
    assert masked_fraction(0.5, "cosine") == pytest.approx(math.sqrt(0.5))
    # arccos reveals more cells early than cosine.
    assert reveal_counts(256, 8, "arccos")[0] > reveal_counts(256, 8, "cosine")[0]


# Guidance ----------------------------------------------------------------------------------------


def test_guidance_ramps():
    assert guidance_weights(3.0, 4, "linear") == pytest.approx((0.0, 1.0, 2.0, 3.0))
    assert guidance_weights(3.0, 1, "linear") == (3.0,)
    assert guidance_weights(2.0, 3, "constant") == (2.0, 2.0, 2.0)
    conditional, unconditional = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 4.0])
    torch.testing.assert_close(guided_logits(conditional, unconditional, 2.0), torch.tensor([2.0, -2.0]))


def test_guidance_changes_samples(halton_source):
    # The class embedding conditions every Halton block; in the random v1 fixture the class token barely moves the logits.
    source = halton_source
    plain = mgm2fp.sample(source, 4, steps=4, labels=[0, 1, 2, 3], seed=5)
    guided = mgm2fp.sample(source, 4, steps=4, labels=[0, 1, 2, 3], cfg_weight=5.0, cfg_ramp="constant", seed=5)
    assert not torch.equal(plain.tokens, guided.tokens)
    assert [step.extra["cfg_weight"] for step in guided.steps] == [5.0] * 4


def test_guidance_needs_labels(source):
    with pytest.raises(ConfigError, match="needs class labels"):
        mgm2fp.sample(source, 2, steps=2, cfg_weight=2.0)


# Reuse on token grids ----------------------------------------------------------------------------


def test_gamma_same_on_flat_and_grid_codes():
    previous = torch.full((2, 16), MASK)
    previous[:, :5] = 7
    current = previous.clone()
    current[:, 5:9] = 3
    current[1, 0] = 8  # a changed visible code
    flat = three_state_gamma(previous, current, MASK)
    grid = three_state_gamma(previous.view(2, 4, 4), current.view(2, 4, 4), MASK)
    torch.testing.assert_close(grid.reshape(2, 16), flat)
    assert flat[0, 0] == 1.0
    assert flat[1, 0] == pytest.approx(0.2)
    assert flat[0, 6] == pytest.approx(0.2)
    assert flat[0, 12] == pytest.approx(0.75 + 0.15 * 9 / 16)


def test_warm_start_covers_extra_positions(fixed_point):
    """The class token (v1) or register token (Halton) after the image cells gets gamma 1."""
    codes = torch.full((2, CELLS), MASK)
    gamma = torch.full((2, CELLS), 0.5)
    output = fixed_point.forward_with_state(codes, torch.tensor([1, 2]), None)
    positions = output.h_pre.shape[1]
    assert positions == CELLS + 1
    weights = fixed_point.position_weights(gamma, positions)
    assert weights.shape == (2, positions)
    assert torch.equal(weights[:, :CELLS], gamma)
    assert torch.equal(weights[:, CELLS:], torch.ones(2, 1))
    warm = fixed_point.forward_with_state(codes, torch.tensor([1, 2]), None, initial_state=output.solution, warm_start_weight=gamma)
    assert warm.logits.shape == output.logits.shape


def test_early_stop_runs_on_images(fixed_point):
    with HookCounter(fixed_point) as counter:
        result = mgm2fp.sample(fixed_point, 3, budget=30, labels=[0, 1, 2], cfg_weight=1.0, tolerance=10.0)
    assert result.block_forward_passes == counter.count < 30
    assert all(step.iterations_per_sample == [1] * 6 for step in result.steps)


# Labels, options and determinism ------------------------------------------------------------------


def test_same_seed_same_samples(fixed_point):
    first = mgm2fp.sample(fixed_point, 3, budget=24, labels="random", seed=7)
    second = mgm2fp.sample(fixed_point, 3, budget=24, labels="random", seed=7)
    other = mgm2fp.sample(fixed_point, 3, budget=24, labels="random", seed=8)
    assert torch.equal(first.tokens, second.tokens)
    assert torch.equal(first.labels, second.labels)
    assert not torch.equal(first.tokens, other.tokens)


def test_confidence_order_is_deterministic(source):
    first = mgm2fp.sample(source, 3, steps=4, order="confidence", gumbel_temperature=2.0, seed=1)
    second = mgm2fp.sample(source, 3, steps=4, order="confidence", gumbel_temperature=2.0, seed=1)
    assert torch.equal(first.tokens, second.tokens)


def test_result_records_labels(source):
    result = mgm2fp.sample(source, 2, steps=2, labels=[4, 9])
    records = result.to_records()
    assert [record["label"] for record in records] == [4, 9]
    assert all(record["text"] is None for record in records)
    assert len(records[0]["tokens"]) == CELLS
    unconditional = mgm2fp.sample(source, 2, steps=2)
    assert unconditional.labels is None
    assert "label" not in unconditional.to_records()[0]


def test_single_label_for_all(source):
    for label in (7, torch.tensor(7), numpy.int64(7)):
        assert mgm2fp.sample(source, 3, steps=2, labels=label).labels.tolist() == [7, 7, 7]


def test_batches_split_labels(source):
    for labels in ([0, 1, 2, 3, 4], torch.arange(5), numpy.arange(5)):
        results = list(sample_in_batches(source, 5, batch_size=2, steps=2, labels=labels))
        assert [result.labels.tolist() for result in results] == [[0, 1], [2, 3], [4]]
    results = list(sample_in_batches(source, 3, batch_size=2, steps=2, labels=6))
    assert [result.labels.tolist() for result in results] == [[6, 6], [6]]
    with pytest.raises(ConfigError, match="3 labels were given for 5 samples"):
        list(sample_in_batches(source, 5, batch_size=2, steps=2, labels=[0, 1, 2]))


@pytest.mark.parametrize(
    ("labels", "message"),
    [([0, 1, 2], "3 labels were given for 2 samples"), ([0, 10], "class id 10 is out of range"), ("all", "labels='all' is invalid"), ([0.5, 1.0], "integer class ids")],
)
def test_invalid_labels_rejected(labels, message):
    with pytest.raises(ConfigError, match=message):
        resolve_labels(labels, 2, 10, generator=torch.Generator(), device=torch.device("cpu"))


def test_seq_len_must_match_grid(source):
    assert mgm2fp.sample(source, 1, CELLS, steps=2).tokens.shape == (1, CELLS)
    with pytest.raises(ConfigError, match="does not fit the model's 4x4 token grid"):
        mgm2fp.sample(source, 1, 32, steps=2)


def test_unknown_option_rejected(source):
    with pytest.raises(ConfigError, match="option top_p does not apply to the .* sampler"):
        mgm2fp.sample(source, 1, steps=2, top_p=0.9)
    with pytest.raises(ConfigError, match="unknown order 'raster'"):
        mgm2fp.sample(source, 1, steps=2, order="raster")


def test_text_tokenizer_rejected(source):
    with pytest.raises(ConfigError, match="samples image tokens, not text"):
        mgm2fp.sample(source, 1, steps=2, tokenizer="gpt2")
