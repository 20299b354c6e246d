"""``mgm2fp push`` and ``mgm2fp.publish`` against a stand-in hub on 127.0.0.1: files, card metadata, options, errors, and the token."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

import mgm2fp
from conftest import MDLM_TINY, run_cli
from hub_standin import TEST_TOKEN, USER, no_outside_network, stand_in_hub  # noqa: F401  (fixtures)
from mgm2fp.errors import CheckpointError, HubError
from mgm2fp.publish import plan_push, push_to_hub

HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"
MODEL_FILES = {"README.md", "config.json", "model.safetensors"}
FINETUNED_FILES = MODEL_FILES | {"recipe.yaml", "eval_results.json", "tokenizer.json", "tokenizer_config.json"}
EVAL_RESULTS = {
    "evaluator": "gpt2-large",
    "results": [
        {"budget": 48, "gen_ppl": 123.4, "entropy": 5.1, "block_forward_passes": 48, "num_samples": 16, "seq_len": 128, "reuse": "3sr"},
        {"budget": 96, "gen_ppl": 104.2, "entropy": 5.3, "block_forward_passes": 96, "num_samples": 16, "seq_len": 128, "reuse": "3sr"},
    ],
}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    """mdlm-tiny converted and saved, with the source recorded as the hub id it mimics."""
    folder = tmp_path_factory.mktemp("saved") / "fp"
    mgm2fp.save_pretrained(mgm2fp.convert(str(MDLM_TINY), share_layers="1-4"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["source"].update(id="kuleshov-group/mdlm-owt", revision=HUB_REVISION)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture
def model_folder(saved_model, tmp_path) -> Path:
    target = tmp_path / "fp"
    shutil.copytree(saved_model, target)
    return target


@pytest.fixture
def finetuned_folder(model_folder) -> Path:
    """A fine-tuned folder with recipe, evaluation output, tokenizer files, and files that must stay local."""
    config = json.loads((model_folder / "config.json").read_text())
    config["finetune"] = {
        "recipe": "cofre-consistency",
        "steps": 200,
        "final_losses": {"loss": 3.25, "loss_mdlm": 3.2, "loss_consistency": 0.05},
        "data": "OpenWebText sample",
        "dataset": "Skylion007/openwebtext",
        "validation_perplexity": 31.5,
    }
    (model_folder / "config.json").write_text(json.dumps(config, indent=2))
    (model_folder / "recipe.yaml").write_text("recipe: cofre-consistency\nsteps: 200\nlr: 2.0e-4\n")
    (model_folder / "eval_results.json").write_text(json.dumps(EVAL_RESULTS))
    (model_folder / "tokenizer.json").write_text('{"version": "1.0"}')
    (model_folder / "tokenizer_config.json").write_text('{"model_max_length": 1024}')
    (model_folder / "checkpoints" / "step-100").mkdir(parents=True)
    (model_folder / "checkpoints" / "step-100" / "model.safetensors").write_bytes(b"checkpoint")
    (model_folder / ".model.safetensors.tmp-123").write_bytes(b"partial")
    (model_folder / "train.log").write_text("step 200 loss 3.25\n")
    (model_folder / "samples.jsonl").write_text('{"text": "hello"}\n')
    return model_folder


def folder_digest(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_token_absent(hub, *texts: str) -> None:
    """The token travels only in Authorization headers: never in a request body, URL, uploaded file or the given texts."""
    token = TEST_TOKEN.encode()
    for request in hub.requests:
        assert token not in request.body, f"token in the body of {request.method} {request.path}"
        assert TEST_TOKEN not in request.path
        assert all(TEST_TOKEN not in value for name, value in request.headers.items() if name.lower() != "authorization")
    for repo in hub.repos.values():
        for ref, files in repo.refs.items():
            for name, data in files.items():
                assert token not in data, f"token in uploaded file {name} on {ref}"
    for text in texts:
        assert TEST_TOKEN not in text


def test_push_uploads_model_files(stand_in_hub, finetuned_folder):
    before = folder_digest(finetuned_folder)
    result = push_to_hub(finetuned_folder, "me/mdlm-owt-fp")

    repo = stand_in_hub.repos["me/mdlm-owt-fp"]
    uploaded = repo.refs["main"]
    assert set(uploaded) == FINETUNED_FILES
    for name in FINETUNED_FILES - {"README.md"}:
        assert uploaded[name] == (finetuned_folder / name).read_bytes(), name
    assert result.commit_oid == repo.commits[-1].oid
    assert result.pull_request_url is None
    assert not repo.private
    assert stand_in_hub.unexpected == []
    assert folder_digest(finetuned_folder) == before  # the local folder and its card are left unchanged
    assert_token_absent(stand_in_hub)


def test_push_card_metadata(stand_in_hub, finetuned_folder):
    push_to_hub(finetuned_folder, "me/mdlm-owt-fp")
    card = ModelCard(stand_in_hub.repos["me/mdlm-owt-fp"].refs["main"]["README.md"].decode())
    metadata = card.data.to_dict()
    assert metadata["base_model"] == "kuleshov-group/mdlm-owt"
    assert metadata["library_name"] == "mgm2fp"
    assert metadata["pipeline_tag"] == "text-generation"
    assert metadata["datasets"] == ["Skylion007/openwebtext"]
    assert {"fixed-point", "mdlm", "masked-diffusion"} <= set(metadata["tags"])
    results = metadata["model-index"][0]["results"]
    assert metadata["model-index"][0]["name"] == "me/mdlm-owt-fp"
    assert [result["dataset"]["args"]["budget"] for result in results] == [48, 96]
    assert {metric["type"] for metric in results[1]["metrics"]} == {"generative-perplexity", "unigram-entropy"}
    assert "## Fine-tuning" in card.text
    assert "| steps | 200 |" in card.text
    assert "lr: 2.0e-4" in card.text
    assert "| 96 | 104.2 | 5.3 |" in card.text
    assert 'mgm2fp.load("me/mdlm-owt-fp")' in card.text


def test_push_twice_same_card(stand_in_hub, finetuned_folder):
    push_to_hub(finetuned_folder, "me/mdlm-owt-fp")
    first = stand_in_hub.repos["me/mdlm-owt-fp"].refs["main"]["README.md"]
    (finetuned_folder / "README.md").write_bytes(first)
    push_to_hub(finetuned_folder, "me/mdlm-owt-fp")
    assert stand_in_hub.repos["me/mdlm-owt-fp"].commits[-1].files["README.md"] == first


def test_push_keeps_user_text_of_card(stand_in_hub, model_folder):
    card = (model_folder / "README.md").read_text()
    (model_folder / "README.md").write_text(card + "\n## Limitations\n\nWritten by hand.\n")
    push_to_hub(model_folder, "me/fp")
    uploaded = stand_in_hub.repos["me/fp"].refs["main"]["README.md"].decode()
    assert uploaded.endswith("## Limitations\n\nWritten by hand.\n")


def test_push_revision_creates_branch(stand_in_hub, model_folder):
    result = push_to_hub(model_folder, "me/fp", revision="experiment")
    repo = stand_in_hub.repos["me/fp"]
    assert set(repo.refs["experiment"]) == MODEL_FILES
    assert repo.refs["main"] == {}
    assert result.revision == "experiment"
    assert any(request.path == "/api/models/me/fp/branch/experiment" for request in stand_in_hub.requests)
    # A second push to the existing branch commits again instead of failing.
    push_to_hub(model_folder, "me/fp", revision="experiment")
    assert [commit.ref for commit in repo.commits] == ["experiment", "experiment"]


def test_push_create_pr(stand_in_hub, model_folder):
    result = push_to_hub(model_folder, "me/fp", create_pr=True, private=True)
    repo = stand_in_hub.repos["me/fp"]
    assert repo.private
    assert repo.refs["main"] == {}
    assert set(repo.refs["refs/pr/1"]) == MODEL_FILES
    assert result.pull_request_url is not None
    assert result.pull_request_url.endswith("/me/fp/discussions/1")


def test_push_commit_message(stand_in_hub, model_folder):
    push_to_hub(model_folder, "me/fp")
    push_to_hub(model_folder, "me/fp", commit_message="Add the fine-tuned weights")
    summaries = [commit.summary for commit in stand_in_hub.repos["me/fp"].commits]
    assert summaries[0] == "Upload fixed-point mdlm model converted from kuleshov-group/mdlm-owt with mgm2fp"
    assert summaries[1] == "Add the fine-tuned weights"


def test_push_bare_name_uses_user_namespace(stand_in_hub, model_folder):
    result = push_to_hub(model_folder, "fp")
    assert result.repo_id == f"{USER}/fp"
    uploaded = stand_in_hub.repos[f"{USER}/fp"].refs["main"]
    assert set(uploaded) == MODEL_FILES
    assert f'mgm2fp.load("{USER}/fp")' in uploaded["README.md"].decode()


def test_push_eval_results_file(stand_in_hub, model_folder, tmp_path):
    results_file = tmp_path / "elsewhere" / "results.json"
    results_file.parent.mkdir()
    results_file.write_text(json.dumps(EVAL_RESULTS))
    push_to_hub(model_folder, "me/fp", eval_results_path=results_file)
    uploaded = stand_in_hub.repos["me/fp"].refs["main"]
    assert uploaded["eval_results.json"] == results_file.read_bytes()
    metadata = ModelCard(uploaded["README.md"].decode()).data.to_dict()
    assert len(metadata["model-index"][0]["results"]) == 2
    assert not (model_folder / "eval_results.json").exists()


def test_push_wrong_token(stand_in_hub, model_folder):
    wrong = "hf_WrongTokenZYXWVUTSRQ9876543210"
    with pytest.raises(HubError) as error:
        push_to_hub(model_folder, "me/fp", token=wrong)
    assert "401" in str(error.value)
    assert "hf auth login" in str(error.value)
    assert wrong not in str(error.value)
    assert stand_in_hub.repos == {}


def test_push_offline_mode(stand_in_hub, model_folder, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        push_to_hub(model_folder, "me/fp")
    assert stand_in_hub.requests == []


def test_plan_lists_model_files_only(finetuned_folder):
    plan = plan_push(finetuned_folder, "me/fp")
    assert {file.path_in_repo for file in plan.files} == FINETUNED_FILES
    assert set(plan.skipped) == {"checkpoints/", ".model.safetensors.tmp-123", "train.log", "samples.jsonl"}
    card = next(file for file in plan.files if file.path_in_repo == "README.md")
    assert card.size == len(plan.card.encode())


def test_plan_sharded_weights(model_folder):
    (model_folder / "model.safetensors").rename(model_folder / "model-00001-of-00002.safetensors")
    (model_folder / "model-00002-of-00002.safetensors").write_bytes(b"second shard")
    (model_folder / "model.safetensors.index.json").write_text("{}")
    names = {file.path_in_repo for file in plan_push(model_folder, "me/fp").files}
    assert {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"} <= names


# --- the command line ---------------------------------------------------------------------


def test_cli_push(stand_in_hub, finetuned_folder, capfd, monkeypatch):
    from huggingface_hub.utils import logging as hf_logging

    # Record every log record of every logger, whatever handlers and propagation the CLI sets up.
    records = []
    original_handle = logging.Logger.handle

    def handle(logger, record):
        records.append(record)
        return original_handle(logger, record)

    monkeypatch.setattr(logging.Logger, "handle", handle)
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_debug()
    try:
        code, out, err = run_cli(["-v", "push", finetuned_folder, "me/mdlm-owt-fp", "--commit-message", "First upload"], capfd)
    finally:
        hf_logging.set_verbosity(previous)
    assert code == 0, err
    assert "pushed 7 files" in out
    assert stand_in_hub.repos["me/mdlm-owt-fp"].commits[0].oid in out
    assert stand_in_hub.repos["me/mdlm-owt-fp"].commits[0].summary == "First upload"
    logged = "\n".join(f"{record.name} {record.getMessage()} {record.args!r}" for record in records)
    assert "api/repos/create" in logged  # the debug logs of huggingface_hub and its HTTP client were recorded
    assert "mgm2fp.publish" in logged
    assert_token_absent(stand_in_hub, out, err, logged)


def test_cli_push_create_pr(stand_in_hub, model_folder, capsys):
    code, out, err = run_cli(["push", model_folder, "me/fp", "--create-pr", "--private"], capsys)
    assert code == 0, err
    assert "pull request: " in out
    assert stand_in_hub.repos["me/fp"].private
    assert_token_absent(stand_in_hub, out, err)


def test_cli_create_pr_with_revision(stand_in_hub, model_folder, capsys):
    code, _, err = run_cli(["push", model_folder, "me/fp", "--create-pr", "--revision", "dev"], capsys)
    assert code == 1
    assert "--create-pr" in err
    assert stand_in_hub.requests == []


def test_cli_dry_run(stand_in_hub, finetuned_folder, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    before = folder_digest(finetuned_folder)
    code, out, err = run_cli(["push", finetuned_folder, "me/fp", "--dry-run"], capsys)
    assert code == 0, err
    for name in FINETUNED_FILES:
        assert name in out
    assert "checkpoints/" in out.split("not uploaded:")[1]
    assert "base_model: kuleshov-group/mdlm-owt" in out
    assert "generative-perplexity" in out
    assert stand_in_hub.requests == []
    assert folder_digest(finetuned_folder) == before


def test_cli_missing_token(stand_in_hub, model_folder, capsys, monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))
    code, out, err = run_cli(["push", model_folder, "me/fp"], capsys)
    assert code == 1
    assert "hf auth login" in err
    assert "HF_TOKEN" in err
    assert len(err.strip().splitlines()) == 1
    assert stand_in_hub.requests == []


def _no_config(folder: Path) -> None:
    (folder / "config.json").unlink()


def _other_model_type(folder: Path) -> None:
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(MDLM_TINY / name, folder / name)


def _no_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def _invalid_config(folder: Path) -> None:
    (folder / "config.json").write_text("{not json")


BAD_FOLDERS = [
    # (case, change to a saved folder, words expected in the one-line error)
    ("no config", _no_config, ["not an mgm2fp model folder", "no config.json"]),
    ("other model type", _other_model_type, ["model_type 'mdlm'", "mgm2fp convert"]),
    ("no weights", _no_weights, ["no model.safetensors"]),
    ("invalid config", _invalid_config, ["invalid JSON"]),
]


@pytest.mark.parametrize("case, change, expected", BAD_FOLDERS, ids=[case for case, _, _ in BAD_FOLDERS])
def test_cli_rejects_bad_folder(stand_in_hub, model_folder, capsys, case, change, expected):
    change(model_folder)
    for extra in ([], ["--dry-run"]):
        code, out, err = run_cli(["push", model_folder, "me/fp", *extra], capsys)
        assert code == 1, out
        assert len(err.strip().splitlines()) == 1, err
        for word in expected:
            assert word in err
    assert stand_in_hub.requests == []


def test_cli_rejects_missing_folder(tmp_path, capsys):
    code, _, err = run_cli(["push", tmp_path / "absent", "me/fp", "--dry-run"], capsys)
    assert code == 1
    assert "not found" in err


def test_cli_rejects_invalid_repo_id(model_folder, capsys):
    code, _, err = run_cli(["push", model_folder, "me/fp/extra", "--dry-run"], capsys)
    assert code == 1
    assert "'me/fp/extra'" in err


def test_plan_without_config_raises(model_folder):
    _no_config(model_folder)
    with pytest.raises(CheckpointError):
        plan_push(model_folder, "me/fp")
