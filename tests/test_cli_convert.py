"""``mgm2fp convert`` and ``mgm2fp inspect`` as a user runs them, including every kind of bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import mgm2fp
from conftest import MDLM_TINY, populate_hub_cache, run_cli


def test_convert_then_inspect(tmp_path, capsys):
    output = tmp_path / "fp"
    code, out, err = run_cli(["convert", MDLM_TINY, "--share-layers", "1-4", "--output", output], capsys)
    assert code == 0, err
    assert "saved" in out
    assert (output / "model.safetensors").is_file()
    model = mgm2fp.load(output)
    assert model.plan.fixed_point == (1, 2, 3, 4)

    code, out, err = run_cli(["inspect", output], capsys)
    assert code == 0, err
    assert "fixed point 1-4" in out
    assert "1 + N x 1 + 1" in out


def test_convert_explicit_plan_and_options(tmp_path, capsys):
    output = tmp_path / "fp"
    args = ["convert", MDLM_TINY, "--pre-layers", "0", "--fixed-point-layers", "2-3", "--post-layers", "5", "--init", "mean", "--injection", "add", "--num-iterations", "6", "--dtype", "bf16", "--output", output]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    config = json.loads((output / "config.json").read_text())
    assert config["layer_plan"]["init"] == "mean"
    assert config["injection"] == "add"
    assert config["num_iterations"] == 6
    assert config["torch_dtype"] == "bfloat16"


def test_convert_hub_id_offline(tmp_path, hf_home, capsys):
    populate_hub_cache(hf_home, "kuleshov-group/mdlm-owt", {"config.json": MDLM_TINY / "config.json", "model.safetensors": MDLM_TINY / "model.safetensors"})
    code, _, err = run_cli(["convert", "kuleshov-group/mdlm-owt", "--share-layers", "2-3", "--output", tmp_path / "fp"], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "fp" / "config.json").read_text())
    assert config["source"]["id"] == "kuleshov-group/mdlm-owt"
    assert config["source"]["revision"] == "0123456789abcdef0123456789abcdef01234567"
    assert "base_model: kuleshov-group/mdlm-owt" in (tmp_path / "fp" / "README.md").read_text()


def test_inspect_source(capsys):
    code, out, err = run_cli(["inspect", MDLM_TINY], capsys)
    assert code == 0, err
    assert "mdlm" in out
    assert "6 block forward passes" in out


def _corrupt(folder, kind):
    weights = folder / "model.safetensors"
    if kind == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        weights.write_bytes(b"not a safetensors file at all" * 10)
    else:
        tensors = load_file(str(weights))
        if kind == "missing":
            del tensors["backbone.blocks.3.attn_out.weight"]
        elif kind == "extra":
            tensors["backbone.blocks.6.attn_out.weight"] = torch.zeros(64, 64)
        elif kind == "misshaped":
            tensors["backbone.blocks.2.mlp.0.weight"] = torch.zeros(128, 64)
        save_file(tensors, str(weights))


BAD_INPUTS = [
    # (case name, extra convert arguments, corruption of the source copy, expected words in the error)
    ("reversed range", ["--share-layers", "4-2"], None, ["'4-2'", "2-4"]),
    ("out of range", ["--share-layers", "3-8"], None, ["'3-8'", "0-5"]),
    ("malformed range", ["--share-layers", "three-five"], None, ["'three-five'", "4-9"]),
    ("explicit order", ["--pre-layers", "3", "--fixed-point-layers", "2", "--post-layers", "5"], None, ["before"]),
    ("unknown init", ["--share-layers", "1-3", "--init", "median"], None, ["'median'", "first"]),
    ("unknown injection", ["--share-layers", "1-3", "--injection", "concat"], None, ["'concat'", "fpdm"]),
    ("truncated weights", ["--share-layers", "1-3"], "truncated", ["truncated", "model.safetensors"]),
    ("corrupt weights", ["--share-layers", "1-3"], "garbage", ["corrupt", "model.safetensors"]),
    ("missing tensor", ["--share-layers", "1-3"], "missing", ["missing tensors", "blocks.3.attn_out.weight"]),
    ("extra tensor", ["--share-layers", "1-3"], "extra", ["unexpected tensors", "blocks.6"]),
    ("misshaped tensor", ["--share-layers", "1-3"], "misshaped", ["mis-shaped", "blocks.2.mlp.0.weight"]),
]


@pytest.mark.parametrize(("case", "arguments", "corruption", "words"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_convert_bad_input(tmp_path, mdlm_copy, capsys, case, arguments, corruption, words):
    if corruption:
        _corrupt(mdlm_copy, corruption)
    output = tmp_path / "out"
    code, _, err = run_cli(["convert", mdlm_copy, *arguments, "--output", output], capsys)
    assert code == 1
    assert err.startswith("error:"), err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err
    assert not output.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mdlm-tiny"]


def test_missing_folder(tmp_path, capsys):
    code, _, err = run_cli(["convert", tmp_path / "nowhere", "--share-layers", "1-3", "--output", tmp_path / "out"], capsys)
    assert code == 1
    assert "nowhere" in err
    assert "not found" in err
    assert not (tmp_path / "out").exists()


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["convert", tmp_path / "empty", "--share-layers", "1-3", "--output", tmp_path / "out"], capsys)
    assert code == 1
    assert "empty" in err
    assert not (tmp_path / "out").exists()


def test_unknown_family(tmp_path, mdlm_copy, capsys):
    config = json.loads((mdlm_copy / "config.json").read_text())
    config["model_type"] = "llama"
    (mdlm_copy / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(["convert", mdlm_copy, "--share-layers", "1-3", "--output", tmp_path / "out"], capsys)
    assert code == 1
    assert "'llama'" in err
    assert "supported" in err
    assert not (tmp_path / "out").exists()


def test_existing_output_rejected(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("user data")
    code, _, err = run_cli(["convert", MDLM_TINY, "--share-layers", "1-3", "--output", tmp_path / "out"], capsys)
    assert code == 1
    assert "--overwrite" in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "user data"


def test_verbose_shows_traceback(tmp_path, capsys):
    with pytest.raises(Exception, match="reversed"):
        run_cli(["--verbose", "convert", MDLM_TINY, "--share-layers", "4-2", "--output", tmp_path / "out"], capsys)


def test_failure_during_save_leaves_nothing(tmp_path, monkeypatch):
    import mgm2fp.fixed_point.loader as loader

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(loader, "save_state_dict", fail)
    model = mgm2fp.convert(MDLM_TINY, share_layers="1-3")
    with pytest.raises(RuntimeError):
        mgm2fp.save_pretrained(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_keeps_unrelated_folder(tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "important.txt").write_text("user data")
    code, _, err = run_cli(["convert", MDLM_TINY, "--share-layers", "1-3", "--output", folder, "--overwrite"], capsys)
    assert code == 1
    assert "did not write" in err
    assert (folder / "important.txt").read_text() == "user data"


def test_overwrite_rejects_current_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    code, _, err = run_cli(["convert", MDLM_TINY, "--share-layers", "1-3", "--output", ".", "--overwrite"], capsys)
    assert code == 1
    assert "current folder" in err
    assert (tmp_path / "config.json").read_text() == "{}"


def test_overwrite_replaces_earlier_model(tmp_path, capsys):
    output = tmp_path / "fp"
    assert run_cli(["convert", MDLM_TINY, "--share-layers", "1-3", "--output", output], capsys)[0] == 0
    code, _, err = run_cli(["convert", MDLM_TINY, "--share-layers", "2-3", "--output", output, "--overwrite"], capsys)
    assert code == 0, err
    assert mgm2fp.load(output).plan.fixed_point == (2, 3)
    assert (output / "model.safetensors").stat().st_mode & 0o044 == 0o044


def test_overwrite_keeps_model_folder_with_user_files(tmp_path, capsys):
    output = tmp_path / "fp"
    assert run_cli(["convert", MDLM_TINY, "--share-layers", "1-3", "--output", output], capsys)[0] == 0
    (output / "train.py").write_text("print('mine')")
    code, _, err = run_cli(["convert", MDLM_TINY, "--share-layers", "2-3", "--output", output, "--overwrite"], capsys)
    assert code == 1
    assert "'train.py'" in err
    assert (output / "train.py").read_text() == "print('mine')"


def test_output_equal_to_source_rejected(mdlm_copy, capsys):
    before = (mdlm_copy / "model.safetensors").read_bytes()
    code, _, err = run_cli(["convert", mdlm_copy, "--share-layers", "1-3", "--output", mdlm_copy, "--overwrite"], capsys)
    assert code == 1
    assert "contains the source" in err
    assert (mdlm_copy / "model.safetensors").read_bytes() == before
