"""Three-state reuse: the gamma of each token state, the config, and the warm starts a sampler makes."""

from __future__ import annotations

import pytest
import torch

import mgm2fp
from mgm2fp.errors import ConfigError
from mgm2fp.sampling.reuse import ReuseConfig, three_state_gamma, warm_start_weight
from conftest import MDLM_TINY

M = 9  # mask id in these tests


def test_gamma_unchanged_visible_is_one():
    previous = torch.tensor([[1, 2, M, M]])
    current = torch.tensor([[1, 2, M, M]])
    gamma = three_state_gamma(previous, current, M)
    assert gamma[0, 0].item() == 1.0
    assert gamma[0, 1].item() == 1.0


def test_gamma_still_masked_follows_visible_fraction():
    previous = torch.tensor([[1, M, M, M], [M, M, M, M]])
    current = torch.tensor([[1, M, M, M], [M, M, M, M]])
    gamma = three_state_gamma(previous, current, M, gamma_min=0.6, gamma_max=1.0)
    assert gamma[0, 1:].tolist() == pytest.approx([0.7] * 3)  # 1 of 4 visible: 0.6 + 0.4 * 0.25
    assert gamma[1].tolist() == pytest.approx([0.6] * 4)  # nothing visible: gamma_min


def test_gamma_default_coefficients():
    previous = torch.tensor([[M, M, M, M, M]])
    current = torch.tensor([[3, 4, 5, 6, M]])
    gamma = three_state_gamma(previous, current, M)
    assert gamma[0, :4].tolist() == pytest.approx([0.2] * 4)
    assert gamma[0, 4].item() == pytest.approx(0.75 + 0.15 * 0.8)


def test_gamma_newly_revealed_and_changed():
    previous = torch.tensor([[M, 5, 5, M]])
    current = torch.tensor([[4, 6, M, M]])  # revealed, changed, remasked, still masked
    gamma = three_state_gamma(previous, current, M, gamma_changed=0.3)
    assert gamma[0, :3].tolist() == pytest.approx([0.3, 0.3, 0.3])
    assert gamma[0, 3].item() == pytest.approx(0.75 + 0.15 * 0.5)


def test_gamma_on_token_grid():
    previous = torch.full((2, 2, 2), M)
    current = torch.tensor([[[1, M], [M, M]], [[1, 2], [3, M]]])
    gamma = three_state_gamma(previous, current, M)
    assert gamma.shape == (2, 2, 2)
    assert gamma.dtype == torch.float32
    assert gamma[0, 1, 1].item() == pytest.approx(0.75 + 0.15 * 0.25)
    assert gamma[1, 1, 1].item() == pytest.approx(0.75 + 0.15 * 0.75)
    assert gamma[1, 0, 0].item() == pytest.approx(0.2)


def test_gamma_rejects_shape_change():
    with pytest.raises(ConfigError, match="token shapes differ"):
        three_state_gamma(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long), M)


def test_reuse_config_validation():
    assert ReuseConfig().to_dict() == {"mode": "3sr", "gamma_min": 0.75, "gamma_max": 0.9, "gamma_changed": 0.2}
    assert ReuseConfig.from_value("full", gamma_min=None, gamma_changed=0.1).gamma_changed == 0.1
    assert ReuseConfig.from_value(ReuseConfig(mode="none"), gamma_max=0.95).mode == "none"
    with pytest.raises(ConfigError, match="unknown reuse mode 'partial'"):
        ReuseConfig(mode="partial")
    with pytest.raises(ConfigError, match="gamma_changed=1.5 is invalid"):
        ReuseConfig(gamma_changed=1.5)
    with pytest.raises(ConfigError, match="gamma_min=0.95 is larger than gamma_max=0.9"):
        ReuseConfig(gamma_min=0.95)


def test_warm_start_weight_per_mode():
    previous, current = torch.tensor([[M, 1]]), torch.tensor([[2, 1]])
    assert warm_start_weight(ReuseConfig(mode="full"), previous, current, M) is None
    gamma = warm_start_weight(ReuseConfig(mode="3sr", gamma_changed=0.1), previous, current, M)
    assert gamma[0].tolist() == pytest.approx([0.1, 1.0])


@pytest.fixture(scope="module")
def fixed_point():
    return mgm2fp.convert(mgm2fp.load(MDLM_TINY), share_layers="1-4")


def record_warm_starts(model, monkeypatch):
    calls = []
    original = type(model).forward_with_state

    def spy(self, tokens, *condition, **kwargs):
        calls.append({"tokens": tokens.clone(), "initial_state": kwargs.get("initial_state"), "weight": kwargs.get("warm_start_weight")})
        output = original(self, tokens, *condition, **kwargs)
        calls[-1]["solution"] = output.solution
        return output

    monkeypatch.setattr(type(model), "forward_with_state", spy)
    return calls


@pytest.mark.parametrize("mode", ["none", "full", "3sr"])
def test_sampler_warm_starts(fixed_point, monkeypatch, mode):
    calls = record_warm_starts(fixed_point, monkeypatch)
    result = mgm2fp.sample(fixed_point, 2, 16, budget=24, reuse=mode, decode=False)
    assert len(calls) == 4
    assert calls[0]["initial_state"] is None  # never a warm start at the first step
    assert result.steps[0].warm_start is False
    for previous, call, stats in zip(calls, calls[1:], result.steps[1:]):
        if mode == "none":
            assert call["initial_state"] is None
            assert stats.warm_start is False
            continue
        assert stats.warm_start is True
        assert torch.equal(call["initial_state"], previous["solution"])
        if mode == "full":
            assert call["weight"] is None
        else:
            expected = three_state_gamma(previous["tokens"], call["tokens"], fixed_point.mask_token_id)
            assert torch.equal(call["weight"], expected)


def test_sampler_passes_gamma_coefficients(fixed_point, monkeypatch):
    calls = record_warm_starts(fixed_point, monkeypatch)
    mgm2fp.sample(fixed_point, 2, 16, budget=24, reuse="3sr", gamma_min=0.5, gamma_max=0.5, gamma_changed=0.0, decode=False)
    weights = calls[1]["weight"]
    assert set(weights.unique().tolist()) <= {0.0, 0.5, 1.0}
    assert 0.5 in weights.tolist()[0] + weights.tolist()[1]
