"""MDLM sampling: budget accounting checked with forward hooks, finished samples, cache, determinism."""

from __future__ import annotations

import pytest
import torch

import mgm2fp
from mgm2fp.errors import ConfigError, UnknownFamilyError
from mgm2fp.sampling import SampleResult, get_sampler, register_sampler, sample_categorical, sample_in_batches, top_p_filter
from mgm2fp.sampling.registry import _SAMPLERS
from conftest import MDLM_TINY

MASK = 100  # mdlm-tiny: vocab 101, the mask is the last id


@pytest.fixture(scope="module")
def source():
    return mgm2fp.load(MDLM_TINY)


@pytest.fixture(scope="module")
def fixed_point(source):
    return mgm2fp.convert(source, share_layers="1-4")


@pytest.fixture(scope="module")
def identity_fixed_point(source):
    """A fixed-point model whose shared block is the identity (zero adaLN gates): it converges at once."""
    model = mgm2fp.convert(source, share_layers="1-4", injection="none")
    with torch.no_grad():
        model.fixed_point_block.layers[0].adaLN_modulation.weight.zero_()
        model.fixed_point_block.layers[0].adaLN_modulation.bias.zero_()
    return model


def block_modules(model):
    if isinstance(model, mgm2fp.FixedPointMGM):
        return [*model.pre_blocks, *model.fixed_point_block.layers, *model.post_blocks]
    return list(model.blocks)


class HookCounter:
    """Count block calls with forward hooks, independently of the model's own counter."""

    def __init__(self, model):
        self.count = 0
        self.handles = [block.register_forward_hook(self.hook) for block in block_modules(model)]

    def hook(self, module, inputs, output):
        self.count += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def sample_counted(model, **kwargs) -> tuple[SampleResult, int]:
    with HookCounter(model) as counter:
        result = mgm2fp.sample(model, decode=False, **kwargs)
    return result, counter.count


@pytest.mark.parametrize("reuse", ["none", "full", "3sr"])
@pytest.mark.parametrize("kind", ["source", "fixed_point"])
def test_budget_accounting_matches_hooks(request, kind, reuse):
    model = request.getfixturevalue(kind)
    for budget in (6, 23, 48):
        result, hooked = sample_counted(model, num_samples=3, seq_len=16, budget=budget, reuse=reuse)
        assert result.block_forward_passes == hooked
        assert result.block_forward_passes <= budget
        assert sum(step.block_forward_passes for step in result.steps) == hooked
        assert result.budget == budget


@pytest.mark.parametrize("reuse", ["none", "full", "3sr"])
def test_fixed_point_step_costs(fixed_point, reuse):
    result, hooked = sample_counted(fixed_point, num_samples=2, seq_len=16, budget=48, reuse=reuse, schedule="decreasing")
    assert hooked == 48
    assert result.iterations == list(result.plan.iterations)
    for step in result.steps:
        assert step.block_forward_passes == 1 + step.iterations + 1


def test_source_spends_steps_times_blocks(source):
    result, hooked = sample_counted(source, num_samples=2, seq_len=16, steps=5)
    assert hooked == 5 * 6
    assert result.num_steps == 5
    assert result.iterations is None
    assert result.budget is None


@pytest.mark.parametrize("kind", ["source", "fixed_point"])
def test_finished_samples_have_no_mask(request, kind):
    model = request.getfixturevalue(kind)
    for steps in (1, 3, 40):
        result = mgm2fp.sample(model, 4, 16, steps=steps, decode=False)
        assert result.tokens.shape == (4, 16)
        assert result.tokens.dtype == torch.long
        assert not bool((result.tokens == MASK).any())
        assert sum(step.revealed for step in result.steps) == 4 * 16


def test_same_seed_same_samples(fixed_point):
    first = mgm2fp.sample(fixed_point, 3, 16, budget=24, seed=7, decode=False)
    second = mgm2fp.sample(fixed_point, 3, 16, budget=24, seed=7, decode=False)
    other = mgm2fp.sample(fixed_point, 3, 16, budget=24, seed=8, decode=False)
    assert torch.equal(first.tokens, second.tokens)
    assert not torch.equal(first.tokens, other.tokens)


def test_cache_skips_steps_that_changed_nothing(source):
    # 64 steps for 16 tokens: many steps reveal nothing, and the next step reuses the logits.
    result, hooked = sample_counted(source, num_samples=1, seq_len=16, steps=64)
    skipped = [step for step in result.steps if step.skipped]
    assert skipped
    assert all(step.block_forward_passes == 0 for step in skipped)
    assert hooked == 6 * (64 - len(skipped))
    for previous, step in zip(result.steps, result.steps[1:]):
        assert step.skipped == (previous.revealed == 0)


def test_cache_keeps_samples_unchanged(source):
    cached = mgm2fp.sample(source, 2, 16, steps=64, seed=3, decode=False)
    uncached = mgm2fp.sample(source, 2, 16, steps=64, seed=3, cache=False, decode=False)
    assert torch.equal(cached.tokens, uncached.tokens)
    assert uncached.block_forward_passes == 64 * 6
    assert cached.block_forward_passes < uncached.block_forward_passes


def test_cache_skips_fixed_point_steps(fixed_point):
    result, hooked = sample_counted(fixed_point, num_samples=1, seq_len=8, steps=32, reuse="3sr")
    skipped = [step for step in result.steps if step.skipped]
    assert skipped
    assert all(step.iterations == 0 for step in skipped)
    assert hooked == result.block_forward_passes


def test_time_conditioned_model_never_skips(source, monkeypatch):
    monkeypatch.setattr(source, "time_conditioning", True)
    result = mgm2fp.sample(source, 1, 16, steps=64, decode=False)
    assert not any(step.skipped for step in result.steps)
    assert result.block_forward_passes == 64 * 6


def test_early_stop_spends_less(identity_fixed_point):
    result, hooked = sample_counted(identity_fixed_point, num_samples=2, seq_len=16, budget=48, tolerance=1e-6)
    assert result.iterations == [1] * result.num_steps
    assert hooked == result.num_steps * 3 < 48
    assert all(step.iterations_per_sample == [1, 1] for step in result.steps)
    assert all(step.residual == 0.0 for step in result.steps)


@pytest.mark.parametrize("solver", ["picard", "anderson"])
def test_solver_options_in_sampling(fixed_point, solver):
    result, hooked = sample_counted(fixed_point, num_samples=2, seq_len=16, budget=30, solver=solver, tolerance=1e-9, track_residuals=True)
    assert hooked == result.block_forward_passes <= 30
    for step in result.steps:
        assert len(step.residuals) == step.iterations
        assert step.residual == step.residuals[-1]


def test_solver_options_rejected_for_source(source):
    with pytest.raises(ConfigError, match="apply only to fixed-point models"):
        mgm2fp.sample(source, 1, 16, budget=12, tolerance=1e-3, decode=False)


def test_reuse_is_none_for_source(source):
    result = mgm2fp.sample(source, 1, 16, budget=12, reuse="3sr", decode=False)
    assert result.reuse == "none"
    assert not any(step.warm_start for step in result.steps)


def test_step_statistics(fixed_point):
    result = mgm2fp.sample(fixed_point, 2, 16, budget=24, decode=False)
    assert [step.index for step in result.steps] == list(range(result.num_steps))
    times = [step.extra["t"] for step in result.steps]
    assert times == sorted(times, reverse=True)
    assert times[0] == 1.0
    assert all(step.seconds >= 0 for step in result.steps)
    assert result.seconds > 0
    assert result.seed == 0
    assert result.family == "mdlm"


def test_records(fixed_point):
    result = mgm2fp.sample(fixed_point, 2, 16, budget=24, seed=5, decode=False)
    records = result.to_records(start_index=10, extra={"model": "tiny"})
    assert [record["index"] for record in records] == [10, 11]
    assert records[0]["tokens"] == result.tokens[0].tolist()
    assert records[0]["text"] is None
    assert records[0]["block_forward_passes"] == result.block_forward_passes
    assert records[0]["iterations"] == result.iterations
    assert records[0]["seed"] == 5
    assert records[0]["model"] == "tiny"


def test_top_p_filter_keeps_nucleus():
    probabilities = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64)
    assert top_p_filter(probabilities, 0.7)[0].tolist() == pytest.approx([0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0])
    assert top_p_filter(probabilities, 0.4)[0].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])
    assert torch.equal(top_p_filter(probabilities, 1.0), probabilities)
    with pytest.raises(ConfigError, match="top_p=0 is invalid"):
        top_p_filter(probabilities, 0)


def test_sample_categorical_in_float64_without_mask():
    logits = torch.zeros(2000, 5, dtype=torch.bfloat16)
    logits[:, 4] = 50.0  # the banned id would always win
    generator = torch.Generator().manual_seed(0)
    tokens = sample_categorical(logits, generator=generator, banned_token_id=4)
    assert not bool((tokens == 4).any())
    assert set(tokens.tolist()) == {0, 1, 2, 3}
    assert logits[0, 4].item() == 50.0  # the caller's logits are left unchanged


def test_top_p_sampling_is_greedy_for_tiny_mass(source):
    greedy = mgm2fp.sample(source, 2, 16, steps=1, top_p=1e-9, decode=False)
    with torch.no_grad():
        logits = source(torch.full((2, 16), MASK))
    logits[..., MASK] = float("-inf")
    assert torch.equal(greedy.tokens, logits.argmax(dim=-1))


def test_invalid_options(source):
    with pytest.raises(ConfigError, match="top_p=1.5 is invalid"):
        mgm2fp.sample(source, 1, 16, budget=12, top_p=1.5, decode=False)
    with pytest.raises(ConfigError, match="seq_len=0 is invalid"):
        mgm2fp.sample(source, 1, 0, budget=12, decode=False)
    with pytest.raises(ConfigError, match="num_samples=0 is invalid"):
        mgm2fp.sample(source, 0, 16, budget=12, decode=False)


def test_default_length_is_model_length(source):
    result = mgm2fp.sample(source, 1, budget=6, decode=False)
    assert result.tokens.shape == (1, 32)


def test_training_mode_restored(fixed_point):
    fixed_point.train()
    try:
        mgm2fp.sample(fixed_point, 1, 8, budget=6, decode=False)
        assert fixed_point.training
    finally:
        fixed_point.eval()


def test_batches_use_consecutive_seeds(source):
    batches = list(sample_in_batches(source, 5, batch_size=2, seed=4, seq_len=8, budget=12, decode=False))
    assert [len(batch.tokens) for batch in batches] == [2, 2, 1]
    assert [batch.seed for batch in batches] == [4, 5, 6]
    alone = mgm2fp.sample(source, 2, 8, budget=12, seed=5, decode=False)
    assert torch.equal(batches[1].tokens, alone.tokens)


def test_registry_dispatches_by_family(fixed_point, monkeypatch):
    calls = []

    def fake_sampler(model, *, num_samples, seq_len, schedule_plan, reuse, generator, **options):
        calls.append((model, num_samples, seq_len, schedule_plan, reuse, sorted(options)))
        return SampleResult(tokens=torch.zeros(num_samples, 4, dtype=torch.long), block_forward_passes=0, budget=schedule_plan.budget, steps=[])

    monkeypatch.setitem(_SAMPLERS, "mdlm", fake_sampler)
    result = mgm2fp.sample(fixed_point, 2, 4, budget=12, reuse="full", decode=False, top_p=0.9)
    assert result.tokens.shape == (2, 4)
    model, num_samples, seq_len, plan, reuse, options = calls[0]
    assert model is fixed_point  # a fixed-point model goes to its source family's sampler
    assert plan.budget == 12
    assert reuse.mode == "full"
    assert options == ["callback", "solver_options", "top_p"]


def test_register_and_unknown_family(monkeypatch):
    monkeypatch.setattr("mgm2fp.sampling.registry._SAMPLERS", dict(_SAMPLERS))

    def sampler(model, **kwargs):
        raise AssertionError("not called")

    register_sampler("toy-family", sampler)
    assert get_sampler("toy-family") is sampler
    with pytest.raises(UnknownFamilyError, match="no sampler is registered for model family 'other'"):
        get_sampler("other")
