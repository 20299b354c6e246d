"""Publish a saved fixed-point model folder to the Hugging Face Hub with a regenerated model card.

``plan_push`` checks the folder, picks the files to upload (config, weights, card, tokenizer files,
recipe, evaluation results) and builds the card. ``push_to_hub`` creates the repository
(``create_repo(exist_ok=True)``) and the branch when one is named. It then uploads the planned files
in one commit with ``upload_folder``. The folder itself is not changed, because the upload is
staged in a temporary folder of links that also contains the regenerated ``README.md``.

The token comes from the ``token`` argument, ``HF_TOKEN`` or the cached login
(``huggingface_hub.get_token``). It is only passed to huggingface_hub, never logged, and removed
from any error message raised here.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgm2fp.cards import CARD_NAME, EVAL_RESULTS_NAME, RECIPE_NAME, build_folder_card
from mgm2fp.errors import CheckpointError, ConfigError, HubError, SourceNotFoundError
from mgm2fp.saving import TOKENIZER_FILES

logger = logging.getLogger(__name__)

# Files of a saved model folder that are uploaded. Everything else (checkpoints, logs,
# temporary files, samples) stays local.
MODEL_FILES = ("config.json", CARD_NAME, RECIPE_NAME, EVAL_RESULTS_NAME, "model.safetensors.index.json", "adapter_model.safetensors", *TOKENIZER_FILES)
WEIGHT_FILE = re.compile(r"^model(-\d+-of-\d+)?\.safetensors$")
LOGIN_HINT = "run `hf auth login` or set HF_TOKEN to a token with write access"


@dataclass
class PushFile:
    """One file of the upload: its name in the repository, its size and where its bytes come from."""

    path_in_repo: str
    size: int
    source: Path | None  # None for the regenerated model card, which is written at upload time


@dataclass
class PushPlan:
    """Upload plan of a folder: the files to upload, the skipped entries and the regenerated card."""

    folder: Path
    repo_id: str
    config: dict[str, Any]
    files: list[PushFile]
    skipped: list[str]  # entries of the folder that are not uploaded, folder names ending with "/"
    card: str
    eval_results_path: Path | None = None  # evaluation results used instead of the folder's eval_results.json

    @property
    def total_bytes(self) -> int:
        return sum(file.size for file in self.files)


@dataclass
class PushResult:
    """URLs of the repository, commit and pull request that a push created."""

    repo_id: str
    repo_url: str
    commit_url: str
    commit_oid: str | None
    revision: str
    pull_request_url: str | None
    files: list[str] = field(default_factory=list)


def read_model_config(folder: str | Path) -> dict[str, Any]:
    """Return the ``config.json`` of a folder written by ``mgm2fp.save_pretrained``.

    Raises:
        SourceNotFoundError: when the folder or its weights do not exist.
        CheckpointError: when ``config.json`` is missing, invalid or not an mgm2fp config.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceNotFoundError(f"model folder '{folder}' not found; pass the folder written by mgm2fp convert or mgm2fp finetune")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"'{folder}' is not an mgm2fp model folder: it has no config.json; convert a model with mgm2fp convert first")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"invalid JSON in {config_path}: {error}; save the model again with mgm2fp") from error
    if not isinstance(config, dict) or config.get("model_type") != "mgm2fp":
        model_type = config.get("model_type") if isinstance(config, dict) else None
        raise CheckpointError(f"'{folder}' is not an mgm2fp model folder: config.json has model_type {model_type!r}, expected 'mgm2fp'; convert it with mgm2fp convert first")
    missing = [key for key in ("family", "layer_plan", "source") if key not in config]
    if missing:
        raise CheckpointError(f"config.json in '{folder}' lacks {', '.join(missing)}; it was not written by mgm2fp save_pretrained, save the model again")
    if not any(WEIGHT_FILE.match(path.name) for path in folder.iterdir() if path.is_file()):
        raise CheckpointError(f"'{folder}' has no model.safetensors; the folder is incomplete, save the model again")
    return config


def validate_repo_name(repo_id: str) -> None:
    """Check that ``repo_id`` is ``NAME`` or ``NAMESPACE/NAME`` as the hub accepts them.

    Raises:
        ConfigError: naming the invalid id.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ConfigError(f"invalid repository id '{repo_id}': {error} Use NAMESPACE/NAME, e.g. my-user/mdlm-owt-fp") from error


def select_files(folder: Path, *, eval_results_path: Path | None = None) -> tuple[list[PushFile], list[str]]:
    """Split the folder's entries into files to upload and skipped entries.

    The folder's ``README.md`` is left out because ``plan_push`` adds the regenerated card.
    ``eval_results_path`` replaces the folder's ``eval_results.json``.
    """
    files, skipped = [], []
    for path in sorted(folder.iterdir()):
        name = path.name
        if path.is_file() and (name in MODEL_FILES or WEIGHT_FILE.match(name)):
            if name == CARD_NAME or (name == EVAL_RESULTS_NAME and eval_results_path is not None):
                continue
            files.append(PushFile(name, path.stat().st_size, path))
        elif name != CARD_NAME:
            skipped.append(name + "/" if path.is_dir() else name)
    if eval_results_path is not None:
        files.append(PushFile(EVAL_RESULTS_NAME, eval_results_path.stat().st_size, eval_results_path))
    return files, skipped


def plan_push(folder: str | Path, repo_id: str, *, eval_results_path: str | Path | None = None) -> PushPlan:
    """Check ``folder``, list the files to upload and build the card that ``push_to_hub`` would write.

    Raises:
        SourceNotFoundError, CheckpointError: when the folder is not a complete mgm2fp model.
        ConfigError: when ``repo_id`` or the evaluation results are invalid.
    """
    folder = Path(folder).expanduser()
    config = read_model_config(folder)
    validate_repo_name(repo_id)
    results_path = None
    if eval_results_path is not None:
        results_path = Path(eval_results_path).expanduser()
        if not results_path.is_file():
            raise SourceNotFoundError(f"evaluation results '{results_path}' not found; pass the JSON file written by mgm2fp eval")

    card = str(build_folder_card(folder, config=config, repo_id=repo_id, eval_results_path=results_path))
    files, skipped = select_files(folder, eval_results_path=results_path)
    files.append(PushFile(CARD_NAME, len(card.encode("utf-8")), None))
    files.sort(key=lambda file: file.path_in_repo)
    return PushPlan(folder=folder, repo_id=repo_id, config=config, files=files, skipped=skipped, card=card, eval_results_path=results_path)


def resolve_token(token: str | None = None) -> str:
    """Return ``token``, else ``HF_TOKEN`` or the cached login.

    Raises:
        HubError: when no token is found.
    """
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubError(f"no Hugging Face token found: {LOGIN_HINT}")
    return token


def resolve_endpoint(endpoint: str | None = None) -> str:
    """Return the hub URL: ``endpoint``, else ``HF_ENDPOINT`` read now, else huggingface_hub's default."""
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    eval_results_path: str | Path | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Upload a saved fixed-point model folder to the hub repository ``repo_id`` with a regenerated card.

    Creates the repository when it does not exist (``private`` applies only then) and the branch
    ``revision`` when it does not exist. With ``create_pr`` the commit opens a pull request
    against the main branch instead of committing to it.

    Raises:
        SourceNotFoundError, CheckpointError, ConfigError: for an invalid folder, id or option.
        HubError: when no token is found, offline mode is on, or a hub request fails.
    """
    from huggingface_hub import constants

    if create_pr and revision not in (None, constants.DEFAULT_REVISION):
        raise ConfigError(f"--create-pr opens a pull request against the main branch and cannot target revision '{revision}'; drop one of the two options")
    plan = plan_push(folder, repo_id, eval_results_path=eval_results_path)
    if constants.is_offline_mode():
        raise HubError("HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it to push, or use --dry-run to see what would be uploaded")
    token = resolve_token(token)
    try:
        return _upload(plan, token=token, endpoint=resolve_endpoint(endpoint), private=private, revision=revision, create_pr=create_pr, commit_message=commit_message)
    except _network_errors() as error:
        raise _hub_error(error, repo_id=repo_id, token=token) from error


def _upload(plan: PushPlan, *, token: str, endpoint: str, private: bool, revision: str | None, create_pr: bool, commit_message: str | None) -> PushResult:
    from huggingface_hub import HfApi

    import mgm2fp

    api = HfApi(endpoint=endpoint, token=token, library_name="mgm2fp", library_version=mgm2fp.__version__)
    repo_url = api.create_repo(plan.repo_id, private=private, exist_ok=True)
    repo_id = repo_url.repo_id or plan.repo_id
    logger.info("repository %s is ready", repo_url)
    if repo_id != plan.repo_id:  # the hub put a bare NAME in the token owner's namespace, so the card names the full id
        plan = plan_push(plan.folder, repo_id, eval_results_path=plan.eval_results_path)
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
        logger.info("branch %s of %s is ready", revision, repo_id)

    message = commit_message or default_commit_message(plan.config)
    with tempfile.TemporaryDirectory(prefix="mgm2fp-push-") as staging:
        stage_files(plan, Path(staging))
        try:
            commit = api.upload_folder(repo_id=repo_id, folder_path=staging, commit_message=message, revision=revision, create_pr=create_pr)
        except ValueError as error:  # huggingface_hub's check of the card metadata, or a malformed hub response
            detail = " ".join(str(error).split()) or type(error).__name__
            raise HubError(f"upload to '{repo_id}' failed: {detail}".replace(token, "<token>")) from error
    logger.info("uploaded %d files to %s: %s", len(plan.files), repo_id, commit.commit_url)
    return PushResult(
        repo_id=repo_id,
        repo_url=str(repo_url),
        commit_url=commit.commit_url,
        commit_oid=commit.oid,
        revision=revision or "main",
        pull_request_url=commit.pr_url,
        files=[file.path_in_repo for file in plan.files],
    )


def stage_files(plan: PushPlan, staging: Path) -> None:
    """Lay out the planned files in ``staging``: links to the folder's files, the card written out.

    Files are symlinked, hard-linked where symlinks are unavailable, and copied as a last resort.
    """
    for file in plan.files:
        target = staging / file.path_in_repo
        if file.source is None:
            target.write_text(plan.card, encoding="utf-8")
            continue
        source = file.source.resolve()
        try:
            target.symlink_to(source)
        except OSError:
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)


def default_commit_message(config: dict[str, Any]) -> str:
    """Return ``Upload fixed-point <family> model converted from <source>``."""
    source = (config.get("source") or {}).get("id")
    return f"Upload fixed-point {config.get('family', '')} model" + (f" converted from {source}" if source else "") + " with mgm2fp"


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exception classes of a failed hub request: huggingface_hub's and those of its HTTP client."""
    from huggingface_hub.errors import HfHubHTTPError

    errors: list[type[BaseException]] = [HfHubHTTPError, ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _hub_error(error: BaseException, *, repo_id: str, token: str) -> HubError:
    """Turn a failed hub request into a one-line ``HubError`` that never contains the token."""
    from huggingface_hub.errors import HfHubHTTPError

    status = None
    response = getattr(error, "response", None)
    if isinstance(error, HfHubHTTPError) and response is not None:
        status = response.status_code
    lines = str(error).strip().splitlines()
    detail = getattr(error, "server_message", None) or (lines[0] if lines else type(error).__name__)
    if status == 401:
        text = f"the hub rejected the token (HTTP 401) for '{repo_id}': {detail}; {LOGIN_HINT}"
    elif status == 403:
        text = f"no write access to '{repo_id}' (HTTP 403): {detail}; use a token with write access to that namespace, or push to your own namespace"
    elif status is not None:
        text = f"hub request for '{repo_id}' failed with HTTP {status}: {detail}"
    else:
        text = f"could not reach the Hugging Face Hub for '{repo_id}': {detail}; check the network and HF_ENDPOINT"
    return HubError(" ".join(text.replace(token, "<token>").split()))
