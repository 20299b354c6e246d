"""The MDLM loader against the upstream reference outputs of the mdlm-tiny fixture."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import mgm2fp
from mgm2fp.families.mdlm import MDLMDiT, subs_log_probs
from mgm2fp.errors import SourceNotFoundError
from conftest import MDLM_TINY, populate_hub_cache

REFERENCE = load_file(str(MDLM_TINY / "reference_outputs.safetensors"))


@pytest.fixture(scope="module")
def model() -> MDLMDiT:
    return mgm2fp.load(MDLM_TINY)


def test_logits_match_reference(model):
    with torch.no_grad():
        logits = model(REFERENCE["input_ids"], REFERENCE["sigma"])
    torch.testing.assert_close(logits, REFERENCE["logits_sigma_zero"], atol=1e-5, rtol=0)


def test_sigma_ignored_without_time_conditioning(model):
    with torch.no_grad():
        with_sigma = model(REFERENCE["input_ids"], REFERENCE["sigma"])
        without_sigma = model(REFERENCE["input_ids"], torch.zeros(3))
    assert torch.equal(with_sigma, without_sigma)


def test_embeddings_and_hidden_states_match(model):
    with torch.no_grad():
        embeddings, _ = model.embed(REFERENCE["input_ids"], REFERENCE["sigma"])
        states = model.hidden_states(REFERENCE["input_ids"], REFERENCE["sigma"])
    torch.testing.assert_close(embeddings, REFERENCE["embeddings"], atol=1e-6, rtol=0)
    assert len(states) == 6
    for index, state in enumerate(states):
        torch.testing.assert_close(state, REFERENCE["hidden_states_sigma_zero"][index], atol=1e-5, rtol=0)


def test_time_conditioning_uses_sigma(mdlm_copy):
    config = json.loads((mdlm_copy / "config.json").read_text())
    config["time_conditioning"] = True
    (mdlm_copy / "config.json").write_text(json.dumps(config))
    conditioned = mgm2fp.load(mdlm_copy)
    with torch.no_grad():
        logits = conditioned(REFERENCE["input_ids"], REFERENCE["sigma"])
    torch.testing.assert_close(logits, REFERENCE["logits_sigma"], atol=1e-5, rtol=0)


def test_subs_log_probs_match(model):
    log_probs = subs_log_probs(REFERENCE["logits_sigma_zero"], REFERENCE["input_ids"], model.mask_token_id)
    torch.testing.assert_close(log_probs, REFERENCE["subs_log_probs_sigma_zero"], atol=1e-5, rtol=0)


def test_mask_token_is_last_id(model):
    assert model.mask_token_id == 100
    assert model.vocab_size == 101


def test_single_weights_file_loads(tmp_path, model):
    weights = tmp_path / "weights.safetensors"
    shutil.copyfile(MDLM_TINY / "model.safetensors", weights)
    bare = mgm2fp.load(weights, num_heads=4)
    with torch.no_grad():
        torch.testing.assert_close(bare(REFERENCE["input_ids"]), REFERENCE["logits_sigma_zero"], atol=1e-5, rtol=0)
    assert bare.config["n_blocks"] == 6


def test_hub_id_resolves_offline(hf_home):
    populate_hub_cache(hf_home, "kuleshov-group/mdlm-owt", {"config.json": MDLM_TINY / "config.json", "model.safetensors": MDLM_TINY / "model.safetensors"})
    hub_model = mgm2fp.load("kuleshov-group/mdlm-owt")
    with torch.no_grad():
        torch.testing.assert_close(hub_model(REFERENCE["input_ids"]), REFERENCE["logits_sigma_zero"], atol=1e-5, rtol=0)
    assert hub_model.source_revision == "0123456789abcdef0123456789abcdef01234567"


def test_hub_revision_pins_commit(hf_home):
    commit = "fedcba9876543210fedcba9876543210fedcba98"
    populate_hub_cache(hf_home, "kuleshov-group/mdlm-owt", {"config.json": MDLM_TINY / "config.json", "model.safetensors": MDLM_TINY / "model.safetensors"}, commit=commit)
    pinned = mgm2fp.load("kuleshov-group/mdlm-owt", revision=commit)
    assert pinned.source_revision == commit


def test_hub_id_missing_from_cache(hf_home):
    with pytest.raises(SourceNotFoundError, match="not in the Hugging Face cache"):
        mgm2fp.load("kuleshov-group/not-downloaded")


def test_bfloat16_dtype(model):
    half = mgm2fp.load(MDLM_TINY, dtype="bf16")
    assert half.vocab_embed.embedding.dtype == torch.bfloat16
    with torch.no_grad():
        logits = half(REFERENCE["input_ids"]).float()
    assert (logits - REFERENCE["logits_sigma_zero"]).abs().max() < 0.5
