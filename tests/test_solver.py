"""Fixed-point solvers: Picard, per-sample early stop, Anderson, and their use by the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mgm2fp
from mgm2fp.errors import ConfigError
from mgm2fp.families.mdlm import MDLMContext
from mgm2fp.fixed_point.injection import FPDMInjection
from mgm2fp.fixed_point.solver import anderson, get_solver, picard
from conftest import MDLM_TINY


class Contraction:
    """``F(h) = rate_b * (0.9 h W^T + 0.1 tanh(h)) + c_b`` per sample b, with ``W`` symmetric of norm 1: Lipschitz constant ``rate_b``."""

    def __init__(self, rates: list[float], *, length: int = 4, dim: int = 8, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        rotation = torch.linalg.qr(torch.randn(dim, dim, generator=generator)).Q
        spectrum = torch.linspace(0.0, 1.0, dim)
        self.weight = rotation @ torch.diag(spectrum) @ rotation.T  # symmetric, eigenvalues in [0, 1]
        self.rates = torch.tensor(rates).view(-1, 1, 1)
        self.offset = torch.randn(len(rates), length, dim, generator=generator)
        self.calls: list[int] = []  # batch size of every call

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.subset(hidden, torch.arange(hidden.shape[0]))

    def subset(self, hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        self.calls.append(hidden.shape[0])
        return self.rates[index] * (0.9 * hidden @ self.weight.T + 0.1 * torch.tanh(hidden)) + self.offset[index]

    def initial(self) -> torch.Tensor:
        return torch.zeros_like(self.offset)

    def fixed_point(self) -> torch.Tensor:
        hidden = self.initial()
        for _ in range(500):
            hidden = self(hidden)
        self.calls.clear()
        return hidden


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, tolerance: float) -> None:
    error = (actual - expected).flatten(1).norm(dim=1) / expected.flatten(1).norm(dim=1)
    assert bool((error < tolerance).all()), error


def test_picard_runs_fixed_count():
    contraction = Contraction([0.5, 0.5])
    result = picard(contraction, contraction.initial(), num_iterations=7)
    assert result.iterations == 7
    assert contraction.calls == [2] * 7
    assert result.iterations_per_sample.tolist() == [7, 7]
    assert result.residuals == []


def test_picard_tracks_residuals_per_iteration():
    contraction = Contraction([0.5, 0.5])
    result = picard(contraction, contraction.initial() + 1, num_iterations=5, track_residuals=True)
    assert len(result.residuals) == 5
    assert all(values.shape == (2,) for values in result.residuals)
    assert float(result.residuals[-1].max()) < float(result.residuals[0].min())


def test_early_stop_reaches_fixed_point():
    contraction = Contraction([0.5, 0.5, 0.5])
    expected = contraction.fixed_point()
    result = picard(contraction, contraction.initial(), num_iterations=200, tolerance=1e-7)
    assert result.iterations < 60
    assert float(result.residuals[-1].max()) < 1e-7
    assert_close_relative(result.solution, expected, 1e-6)


def test_early_stop_is_per_sample():
    contraction = Contraction([0.1, 0.5, 0.9])
    expected = contraction.fixed_point()
    result = picard(contraction, contraction.initial(), num_iterations=500, tolerance=1e-6, subset_step=contraction.subset)
    fast, middle, slow = result.iterations_per_sample.tolist()
    assert fast < middle < slow
    assert result.iterations == slow
    assert_close_relative(result.solution, expected, 1e-4)


def test_early_stop_skips_finished_samples():
    contraction = Contraction([0.1, 0.5, 0.9])
    result = picard(contraction, contraction.initial(), num_iterations=500, tolerance=1e-6, subset_step=contraction.subset)
    fast, middle, slow = result.iterations_per_sample.tolist()
    assert contraction.calls[:fast] == [3] * fast
    assert contraction.calls[fast:middle] == [2] * (middle - fast)
    assert contraction.calls[middle:] == [1] * (slow - middle)


def test_early_stop_without_subset_keeps_finished_states():
    contraction = Contraction([0.1, 0.9])
    with_subset = picard(contraction, contraction.initial(), num_iterations=500, tolerance=1e-6, subset_step=contraction.subset)
    contraction.calls.clear()
    without_subset = picard(contraction, contraction.initial(), num_iterations=500, tolerance=1e-6)
    assert set(contraction.calls) == {2}
    assert torch.equal(with_subset.iterations_per_sample, without_subset.iterations_per_sample)
    torch.testing.assert_close(with_subset.solution, without_subset.solution, rtol=0, atol=1e-6)


def test_anderson_reaches_fixed_point():
    contraction = Contraction([0.9, 0.9])
    expected = contraction.fixed_point()
    with torch.no_grad():
        result = anderson(contraction, contraction.initial(), num_iterations=200, tolerance=1e-7)
    assert float(result.residuals[-1].max()) < 1e-7
    assert_close_relative(result.solution, expected, 1e-6)


def test_anderson_needs_fewer_iterations():
    contraction = Contraction([0.9, 0.9])
    with torch.no_grad():
        plain = picard(contraction, contraction.initial(), num_iterations=500, tolerance=1e-6)
        accelerated = anderson(contraction, contraction.initial(), num_iterations=500, tolerance=1e-6)
    assert accelerated.iterations < plain.iterations / 2


def test_anderson_early_stop_is_per_sample():
    contraction = Contraction([0.1, 0.9])
    expected = contraction.fixed_point()
    with torch.no_grad():
        result = anderson(contraction, contraction.initial(), num_iterations=200, tolerance=1e-6, subset_step=contraction.subset)
    fast, slow = result.iterations_per_sample.tolist()
    assert fast < slow
    assert contraction.calls[fast:] == [1] * (slow - fast)
    assert_close_relative(result.solution, expected, 1e-4)


def test_anderson_fixed_count_without_tolerance():
    contraction = Contraction([0.5, 0.5])
    with torch.no_grad():
        result = anderson(contraction, contraction.initial(), num_iterations=4)
    assert result.iterations == 4
    assert contraction.calls == [2] * 4


def test_anderson_with_autograd_ends_with_picard():
    contraction = Contraction([0.5])
    initial = contraction.initial().requires_grad_(True)
    weight = torch.ones((), requires_grad=True)
    result = anderson(lambda h: contraction(h) * weight, initial, num_iterations=3, no_grad_iterations=5)
    assert result.iterations == 8
    result.solution.sum().backward()
    assert weight.grad is not None
    assert initial.grad is None  # the no-grad iterations cut the graph


def test_picard_no_grad_iterations_cut_graph():
    contraction = Contraction([0.5])
    initial = contraction.initial().requires_grad_(True)
    weight = torch.ones((), requires_grad=True)
    result = picard(lambda h: contraction(h) * weight, initial, num_iterations=2, no_grad_iterations=3)
    assert result.iterations == 5
    result.solution.sum().backward()
    assert weight.grad is not None
    assert initial.grad is None


def test_get_solver_names_and_errors():
    assert get_solver("picard") is picard
    assert get_solver("anderson") is anderson
    assert get_solver("anderson", memory=2).keywords == {"memory": 2}
    with pytest.raises(ConfigError, match="unknown fixed-point solver 'broyden'"):
        get_solver("broyden")
    with pytest.raises(ConfigError, match="memory 0"):
        with torch.no_grad():
            anderson(lambda h: h, torch.zeros(1, 2, 2), num_iterations=1, memory=0)


def test_fpdm_injection_matches_concatenated_form():
    torch.manual_seed(0)
    injection = FPDMInjection(8)
    for parameter in injection.parameters():
        nn.init.normal_(parameter, std=0.3)
    hidden, h_pre = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    expected = injection.fc2(F.gelu(injection.fc1(torch.cat([hidden, injection.input_proj(h_pre)], dim=-1)), approximate="tanh"))
    torch.testing.assert_close(injection(hidden, injection.prepare(h_pre)), expected, rtol=1e-5, atol=1e-6)


class RateBlock(nn.Module):
    """A stand-in shared block ``F(h) = rate_b * h + 1``, with the per-sample rate carried in the context."""

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []

    def forward(self, hidden: torch.Tensor, context: MDLMContext) -> torch.Tensor:
        self.batch_sizes.append(hidden.shape[0])
        return context.conditioning[:, :1, None] * hidden + 1  # rate in column 0


@pytest.fixture
def rate_model(monkeypatch):
    source = mgm2fp.load(MDLM_TINY)
    model = mgm2fp.convert(source, share_layers="1-4", injection="none")
    model.fixed_point_block.layers[0] = RateBlock()
    embed = model.base.embed

    def embed_with_rates(tokens, *condition):
        hidden, context = embed(tokens, *condition)
        conditioning = context.conditioning.clone()  # [B, C]; the real pre and post blocks use all of it
        conditioning[:, 0] = torch.tensor([0.1, 0.5, 0.9])
        return hidden, MDLMContext(conditioning, context.rotary_cos, context.rotary_sin)

    monkeypatch.setattr(model.base, "embed", embed_with_rates)
    return model


def test_model_early_stop_skips_finished_samples(rate_model):
    tokens = torch.zeros(3, 8, dtype=torch.long)
    with torch.no_grad():
        output = rate_model.forward_with_state(tokens, num_iterations=300, tolerance=1e-6)
    fast, middle, slow = output.solver.iterations_per_sample.tolist()
    assert fast < middle < slow < 300
    sizes = rate_model.fixed_point_block.layers[0].batch_sizes
    assert sizes == [3] * fast + [2] * (middle - fast) + [1] * (slow - middle)
    expected = 1 / (1 - torch.tensor([0.1, 0.5, 0.9]))
    torch.testing.assert_close(output.solution.mean(dim=(1, 2)), expected, rtol=1e-4, atol=0)


def test_model_counts_subset_calls_as_block_passes(rate_model):
    tokens = torch.zeros(3, 8, dtype=torch.long)
    rate_model.block_calls.reset()
    with torch.no_grad():
        output = rate_model.forward_with_state(tokens, num_iterations=300, tolerance=1e-6, solver="anderson")
    assert rate_model.block_calls.count == len(rate_model.pre_blocks) + output.solver.iterations + len(rate_model.post_blocks)
