"""CKA analysis of the tiny MDLM fixture: the matrices, the noising, the estimators and invalid input."""

from __future__ import annotations

import pytest
import torch

import mgm2fp
from conftest import MDLM_TINY
from mgm2fp.analysis import analyze_layers, linear_cka, noising_scheme, parse_timesteps, read_analysis_tokens
from mgm2fp.analysis import noising
from mgm2fp.errors import ConfigError
from test_analysis_data import make_word_tokenizer


@pytest.fixture(scope="module")
def model():
    return mgm2fp.load(MDLM_TINY)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 100, (6, 32), generator=torch.Generator().manual_seed(0))


def test_matrix_properties(model, tokens):
    result = analyze_layers(model, tokens, timesteps=[0.2, 0.8], batch_size=4)
    assert result.per_level.shape == (2, 6, 6)
    assert torch.allclose(result.matrix.diagonal(), torch.ones(6, dtype=torch.float64))
    assert torch.allclose(result.matrix, result.matrix.T)
    assert ((result.matrix >= 0) & (result.matrix <= 1 + 1e-12)).all()
    assert result.consecutive.shape == (5,)
    assert result.tokens_per_level == 6 * 32
    assert not torch.allclose(result.per_level[0], result.per_level[1])  # masking differs between levels


def test_matches_direct_computation(model, tokens):
    result = analyze_layers(model, tokens, timesteps=[0.5], batch_size=4, estimator="streaming", seed=3)

    # Rebuild the same masked inputs (one generator, drawn batch by batch) and compute CKA directly.
    generator = torch.Generator().manual_seed(3)
    scheme = noising_scheme(model)
    states = [[] for _ in range(model.num_blocks)]
    for start in range(0, tokens.shape[0], 4):
        inputs, condition = scheme.noise_inputs(model, tokens[start : start + 4], 0.5, generator)
        with torch.no_grad():
            for index, state in enumerate(model.hidden_states(inputs, *condition)):
                states[index].append(state.reshape(-1, state.shape[-1]))
    features = [torch.cat(block) for block in states]
    for i, j in [(0, 1), (0, 5), (2, 4)]:
        assert result.matrix[i, j].item() == pytest.approx(linear_cka(features[i], features[j]).item(), abs=1e-9)


def test_estimators_agree(model, tokens):
    streaming = analyze_layers(model, tokens, timesteps=[0.3], batch_size=3, estimator="streaming")
    sampled = analyze_layers(model, tokens, timesteps=[0.3], batch_size=3, estimator="sampled")
    assert streaming.estimator == "streaming"
    assert sampled.estimator == "sampled"
    assert torch.allclose(streaming.matrix, sampled.matrix, atol=1e-6)


def test_token_subsample(model, tokens):
    result = analyze_layers(model, tokens, timesteps=[0.5], batch_size=4, tokens_per_sequence=5)
    assert result.tokens_per_level == 6 * 5
    assert result.settings["tokens_per_sequence"] == 5
    assert torch.allclose(result.matrix.diagonal(), torch.ones(6, dtype=torch.float64))


def test_progress_reports_every_batch(model, tokens):
    calls = []
    analyze_layers(model, tokens, timesteps=[0.1, 0.9], batch_size=4, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_mdlm_noising_masks_at_level(model):
    clean = torch.randint(0, 100, (8, 32), generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    masked, (sigma,) = noising_scheme(model).noise_inputs(model, clean, 0.7, generator)
    fraction = (masked == model.mask_token_id).float().mean().item()
    assert 0.6 < fraction < 0.8
    assert torch.equal(masked[masked != model.mask_token_id], clean[masked != model.mask_token_id])
    assert sigma.shape == (8,)
    assert sigma[0].item() == pytest.approx(-torch.log1p(torch.tensor(-(1 - 1e-3) * 0.7)).item(), rel=1e-6)


def test_registered_scheme_used(model, tokens, monkeypatch):
    seen = []

    def keep_clean(model, batch, t, generator):
        seen.append(t)
        return batch, (torch.zeros(batch.shape[0]),)

    monkeypatch.setitem(noising._SCHEMES, "mdlm", noising.NoisingScheme(noise_inputs=keep_clean))
    result = analyze_layers(model, tokens, timesteps=[0.2, 0.6], batch_size=6)
    assert seen == [0.2, 0.6]
    # Without masking (and without time conditioning) both levels see the same inputs.
    assert torch.allclose(result.per_level[0], result.per_level[1])


def test_unregistered_family_falls_back_to_mdlm(model, monkeypatch, caplog):
    monkeypatch.setattr(type(model), "family", "other")
    with caplog.at_level("WARNING", logger="mgm2fp"):
        scheme = noising_scheme(model)
    assert scheme is noising.MDLM_NOISING
    assert "'other'" in caplog.text


def test_default_sequence_length(model, tmp_path):
    import numpy as np

    np.save(tmp_path / "ids.npy", np.arange(200) % 100)
    tokens = read_analysis_tokens(model, tmp_path / "ids.npy", num_sequences=10)
    assert tokens.shape == (6, 32)  # model_length 32; 200 tokens fill 6 sequences


def test_text_uses_model_folder_tokenizer(mdlm_copy, tmp_path):
    make_word_tokenizer(mdlm_copy)
    (tmp_path / "corpus.txt").write_text("the cat sat on the mat a dog ran\n" * 10)
    copy = mgm2fp.load(mdlm_copy)
    tokens = read_analysis_tokens(copy, tmp_path / "corpus.txt", num_sequences=2)
    assert tokens[0, :6].tolist() == [2, 3, 4, 5, 2, 6]
    assert tokens.shape == (2, 32)


def test_rejects_out_of_vocabulary(model):
    with pytest.raises(ConfigError, match="token id 150 is outside"):
        analyze_layers(model, torch.full((2, 8), 150))


def test_rejects_fixed_point_model(tokens):
    converted = mgm2fp.convert(MDLM_TINY, share_layers="1-4")
    with pytest.raises(ConfigError, match="source checkpoint"):
        analyze_layers(converted, tokens)


def test_rejects_constant_block(model, monkeypatch):
    def constant_states(tokens, *condition):
        return [torch.ones(tokens.shape[0], tokens.shape[1], 64) for _ in range(6)]

    monkeypatch.setattr(model, "hidden_states", constant_states)
    with pytest.raises(ConfigError, match="constant"):
        analyze_layers(model, torch.zeros(2, 8, dtype=torch.long), timesteps=[0.5])


@pytest.mark.parametrize(("text", "words"), [("", "no noise levels"), ("0.1,abc", "'abc'"), ("0.5,1.5", "1.5"), ("0", "outside")])
def test_parse_timesteps_rejects(text, words):
    with pytest.raises(ConfigError, match=words):
        parse_timesteps(text)


def test_parse_timesteps():
    assert parse_timesteps(" 0.1, 0.3 ,1") == [0.1, 0.3, 1.0]
