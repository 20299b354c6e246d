"""Tests of saving an MDLM DiT in the kuleshov-group/mdlm-owt layout (mgm2fp.families.mdlm_export)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import mgm2fp
from conftest import MDLM_TINY
from mgm2fp.errors import OutputExistsError
from mgm2fp.families.mdlm import MDLMDiT
from mgm2fp.families.mdlm_export import save_mdlm_checkpoint

CONFIG = {"hidden_dim": 32, "cond_dim": 16, "n_blocks": 3, "n_heads": 2, "vocab_size": 61, "model_length": 16, "dropout": 0.1, "time_conditioning": False}


def random_model(seed: int = 0) -> MDLMDiT:
    """A tiny MDLM whose every parameter is random, including the zero-initialised adaLN and output layers."""
    torch.manual_seed(seed)
    model = MDLMDiT(dict(CONFIG))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    return model.eval()


def test_saved_model_reloads_with_identical_outputs(tmp_path: Path) -> None:
    model = random_model()
    save_mdlm_checkpoint(model, tmp_path / "mdlm")

    loaded = mgm2fp.load(tmp_path / "mdlm")
    input_ids = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(1))
    input_ids[1, ::3] = 60  # masked positions
    with torch.no_grad():
        expected = model(input_ids)
        actual = loaded(input_ids)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_saved_layout_matches_release(tmp_path: Path) -> None:
    save_mdlm_checkpoint(random_model(), tmp_path / "mdlm")

    config = json.loads((tmp_path / "mdlm" / "config.json").read_text())
    release = json.loads((MDLM_TINY / "config.json").read_text())
    assert set(config) == set(release)
    assert config["model_type"] == "mdlm"
    assert config["auto_map"] == release["auto_map"]
    assert config["return_dict"] is False
    for name, value in CONFIG.items():
        assert config[name] == value
    with safe_open(str(tmp_path / "mdlm" / "model.safetensors"), "pt") as saved, safe_open(str(MDLM_TINY / "model.safetensors"), "pt") as fixture:
        saved_keys, fixture_keys = set(saved.keys()), set(fixture.keys())
    assert "backbone.rotary_emb.inv_freq" in saved_keys
    assert all(key.startswith("backbone.") for key in saved_keys)
    block_free = {key for key in fixture_keys if ".blocks." not in key}
    assert block_free <= saved_keys
    assert {key.split(".", 3)[3] for key in saved_keys if ".blocks." in key} == {key.split(".", 3)[3] for key in fixture_keys if ".blocks." in key}


def test_fp16_storage(tmp_path: Path) -> None:
    model = random_model()
    save_mdlm_checkpoint(model, tmp_path / "mdlm", dtype="fp16")

    with safe_open(str(tmp_path / "mdlm" / "model.safetensors"), "pt") as saved:
        dtypes = {saved.get_tensor(key).dtype for key in saved.keys()}
    assert dtypes == {torch.float16}
    assert json.loads((tmp_path / "mdlm" / "config.json").read_text())["torch_dtype"] == "float16"
    assert next(model.parameters()).dtype == torch.float32  # the model itself is not converted

    loaded = mgm2fp.load(tmp_path / "mdlm", dtype="fp32")
    rounded = random_model()
    with torch.no_grad():
        for parameter in rounded.parameters():
            parameter.copy_(parameter.half().float())
    input_ids = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids), rounded(input_ids), rtol=1e-5, atol=1e-5)


def test_tokenizer_saved_beside_weights(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from mgm2fp.data.corpus import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["a few words of text to train on, repeated words of text"] * 20, tmp_path / "tokenizer", vocab_size=260)
    save_mdlm_checkpoint(random_model(), tmp_path / "mdlm", tokenizer=tokenizer)

    # The release config names custom code in auto_map, so refuse it explicitly instead of being prompted.
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "mdlm"), trust_remote_code=False)
    assert reloaded("words of text")["input_ids"] == tokenizer("words of text")["input_ids"]
    assert (tmp_path / "mdlm" / "special_tokens_map.json").is_file()


def test_existing_folder_is_kept_without_overwrite(tmp_path: Path) -> None:
    (tmp_path / "mdlm").mkdir()
    (tmp_path / "mdlm" / "keep.txt").write_text("kept")

    with pytest.raises(OutputExistsError):
        save_mdlm_checkpoint(random_model(), tmp_path / "mdlm", overwrite=False)
    assert (tmp_path / "mdlm" / "keep.txt").read_text() == "kept"
