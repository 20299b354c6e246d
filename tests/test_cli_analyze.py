"""``mgm2fp analyze`` and ``mgm2fp convert --layer-plan`` as a user runs them, with bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mgm2fp
from conftest import MDLM_TINY, run_cli
from mgm2fp.analysis import propose_plan

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = ["--num-sequences", "4", "--batch-size", "4", "--timesteps", "0.3,0.7"]


@pytest.fixture
def ids(tmp_path):
    path = tmp_path / "ids.npy"
    np.save(path, np.random.default_rng(0).integers(0, 100, size=(8, 32)))
    return path


def test_analyze_writes_outputs(tmp_path, ids, capsys):
    output = tmp_path / "analysis"
    code, out, err = run_cli(["analyze", MDLM_TINY, "--data", ids, "--output", output, *FAST], capsys)
    assert code == 0, err
    assert "proposed plan" in out
    assert "Strongest boundary" in out

    cka = json.loads((output / "cka.json").read_text())
    assert len(cka["cka"]) == 6
    assert len(cka["consecutive_cka"]) == 5
    assert cka["timesteps"] == [0.3, 0.7]
    assert cka["num_sequences"] == 4
    assert cka["source"] == str(MDLM_TINY)

    data = json.loads((output / "plan.json").read_text())
    plan = mgm2fp.LayerPlan.from_dict(data)
    assert plan.num_source_blocks == 6
    assert data["reasoning"]
    assert "split_scores" in data["scores"]
    for name in ("cka_heatmap.png", "consecutive_cka.png"):
        assert (output / name).read_bytes().startswith(PNG_SIGNATURE)


def test_analyze_options_and_overwrite(tmp_path, ids, capsys):
    output = tmp_path / "analysis"
    output.mkdir()
    (output / "plan.json").write_text("{}")  # an earlier analysis, which --overwrite replaces
    args = ["analyze", MDLM_TINY, "--data", ids, "--output", output, *FAST, "--num-pre", "0", "--num-post", "2", "--init", "last", "--tokens-per-sequence", "8", "--overwrite"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    plan = json.loads((output / "plan.json").read_text())
    assert plan["pre"] == []
    assert plan["post"] == [4, 5]
    assert plan["init"] == "last"
    assert json.loads((output / "cka.json").read_text())["tokens_per_timestep"] == 4 * 8
    assert sorted(path.name for path in output.iterdir()) == ["cka.json", "cka_heatmap.png", "consecutive_cka.png", "plan.json"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["analysis", "ids.npy"]


def test_convert_with_plan_file(tmp_path, capsys):
    cka = torch.full((6, 6), 0.1, dtype=torch.float64)
    cka[2:, 2:] = 0.95
    cka.fill_diagonal_(1.0)
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "plan.json").write_text(json.dumps(propose_plan(cka).to_dict()))

    code, _, err = run_cli(["convert", MDLM_TINY, "--layer-plan", tmp_path / "analysis" / "plan.json", "--output", tmp_path / "fp"], capsys)
    assert code == 0, err
    plan = mgm2fp.load(tmp_path / "fp").plan
    assert (plan.pre, plan.fixed_point, plan.post, plan.init) == ((0,), (2, 3, 4), (5,), "first")

    # A folder works too, and an explicit --init replaces the plan's.
    code, _, err = run_cli(["convert", MDLM_TINY, "--layer-plan", tmp_path / "analysis", "--init", "mean", "--output", tmp_path / "fp2"], capsys)
    assert code == 0, err
    assert mgm2fp.load(tmp_path / "fp2").plan.init == "mean"


def test_convert_auto_plan(tmp_path, ids, capsys):
    args = ["convert", MDLM_TINY, "--layer-plan", "auto", "--data", ids, *FAST, "--num-post", "2", "--injection", "add", "--analysis-output", tmp_path / "analysis"]
    code, out, err = run_cli([*args, "--output", tmp_path / "auto"], capsys)
    assert code == 0, err
    assert "proposed plan" in out
    assert "saved" in out
    auto = mgm2fp.load(tmp_path / "auto")
    assert auto.plan == mgm2fp.LayerPlan.from_dict(json.loads((tmp_path / "analysis" / "plan.json").read_text()))
    assert auto.plan.post == (4, 5)

    # Converting the loaded model (auto) and streaming the source by the saved plan give the same weights.
    code, _, err = run_cli(["convert", MDLM_TINY, "--layer-plan", tmp_path / "analysis", "--injection", "add", "--output", tmp_path / "file"], capsys)
    assert code == 0, err
    auto_state, file_state = auto.state_dict(), mgm2fp.load(tmp_path / "file").state_dict()
    assert auto_state.keys() == file_state.keys()
    for name in auto_state:
        assert auto_state[name].equal(file_state[name]), name


def _write(path, text):
    path.write_text(text)
    return path


BAD_OPTIONS = [
    # (case name, arguments after SOURCE, expected words in the error)
    ("auto without data", lambda tmp, ids: ["convert", "--layer-plan", "auto"], ["--data"]),
    ("data without auto", lambda tmp, ids: ["convert", "--share-layers", "1-3", "--data", ids], ["--layer-plan auto"]),
    ("plan and ranges", lambda tmp, ids: ["convert", "--layer-plan", "auto", "--data", ids, "--share-layers", "1-3"], ["--share-layers"]),
    ("missing plan file", lambda tmp, ids: ["convert", "--layer-plan", tmp / "nowhere.json"], ["not found", "nowhere.json"]),
    ("plan not json", lambda tmp, ids: ["convert", "--layer-plan", _write(tmp / "plan.json", "{oops")], ["not valid JSON"]),
    ("plan lacks keys", lambda tmp, ids: ["convert", "--layer-plan", _write(tmp / "plan.json", '{"pre": [0]}')], ["fixed_point"]),
    ("plan for other model", lambda tmp, ids: ["convert", "--layer-plan", _write(tmp / "plan.json", '{"pre": [0], "fixed_point": [5], "post": [11], "num_source_blocks": 12}')], ["12 blocks", "has 6"]),
    ("auto bad injection", lambda tmp, ids: ["convert", "--layer-plan", "auto", "--data", ids, "--injection", "concat"], ["'concat'"]),
    ("auto bad init", lambda tmp, ids: ["convert", "--layer-plan", "auto", "--data", ids, "--init", "median"], ["'median'"]),
    ("bad timesteps", lambda tmp, ids: ["analyze", "--data", ids, "--timesteps", "0.5,2"], ["2", "(0, 1]"]),
    ("bad group", lambda tmp, ids: ["analyze", "--data", ids, "--fixed-point-group", "middle"], ["'middle'"]),
    ("missing data", lambda tmp, ids: ["analyze", "--data", tmp / "none.npy"], ["not found", "none.npy"]),
    ("text without tokenizer", lambda tmp, ids: ["analyze", "--data", _write(tmp / "c.txt", "some text")], ["--tokenizer"]),
    ("too many pre and post", lambda tmp, ids: ["analyze", "--data", ids, "--num-pre", "3", "--num-post", "3"], ["--num-pre 3"]),
    ("auto too many pre", lambda tmp, ids: ["convert", "--layer-plan", "auto", "--data", ids, "--num-pre", "5", "--num-post", "1"], ["--num-pre 5"]),
]


@pytest.mark.parametrize(("case", "arguments", "words"), BAD_OPTIONS, ids=[case[0] for case in BAD_OPTIONS])
def test_bad_options_rejected(tmp_path, ids, capsys, case, arguments, words):
    command, *rest = arguments(tmp_path, ids)
    output = tmp_path / "out"
    code, _, err = run_cli([command, MDLM_TINY, *FAST, *rest, "--output", output], capsys)
    assert code == 1
    assert err.startswith("error:"), err
    assert "Traceback" not in err
    for word in words:
        assert word in err
    assert not output.exists()


def test_analyze_existing_output_untouched(tmp_path, ids, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("user data")
    code, _, err = run_cli(["analyze", MDLM_TINY, "--data", ids, "--output", tmp_path / "out", *FAST], capsys)
    assert code == 1
    assert "--overwrite" in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "user data"
