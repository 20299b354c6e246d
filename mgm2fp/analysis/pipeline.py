"""The steps around the CKA computation: choosing the analysis tokens, writing the results, reading a plan back."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mgm2fp.analysis.data import load_token_sequences
from mgm2fp.analysis.noising import noising_scheme
from mgm2fp.analysis.planner import PlanProposal
from mgm2fp.analysis.similarity import LayerSimilarity
from mgm2fp.errors import ConfigError, LayerPlanError
from mgm2fp.families.base import MaskedGenerativeModel
from mgm2fp.layer_plan import LayerPlan

logger = logging.getLogger(__name__)

CKA_FILE = "cka.json"
PLAN_FILE = "plan.json"
HEATMAP_FILE = "cka_heatmap.png"
CONSECUTIVE_FILE = "consecutive_cka.png"
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@dataclass
class AnalysisOutputs:
    """Paths of the files that :func:`save_analysis` wrote."""

    folder: Path
    cka: Path
    plan: Path
    heatmap: Path
    consecutive: Path


def model_tokenizer_folder(model: MaskedGenerativeModel) -> Path | None:
    """Return the folder the model was loaded from when it contains tokenizer files, else None."""
    folder = getattr(model, "source_folder", None)
    if folder is None or not Path(folder).is_dir():
        return None
    return Path(folder) if any((Path(folder) / name).is_file() for name in TOKENIZER_MARKERS) else None


def read_analysis_tokens(
    model: MaskedGenerativeModel,
    data: str | Path,
    *,
    tokenizer: Any = None,
    seq_len: int | None = None,
    num_sequences: int | None = 64,
) -> torch.Tensor:
    """Read the analysis sequences ``[N, L]`` for ``model`` from ``data``.

    ``tokenizer`` defaults to the tokenizer files in the model's folder, and ``seq_len`` to the
    length the model was trained on (``model_length`` for MDLM).

    Raises:
        ConfigError: when the sequence length is unknown or the data cannot be read.
    """
    if seq_len is None:
        seq_len = noising_scheme(model).default_length(model)
        if seq_len is None:
            raise ConfigError("the model's config does not give its sequence length; pass --seq-len")
    if tokenizer is None:
        tokenizer = model_tokenizer_folder(model)
    tokens = load_token_sequences(data, tokenizer=tokenizer, seq_len=seq_len, num_sequences=num_sequences)
    logger.info("analysis data: %d sequences of %d tokens from %s", tokens.shape[0], tokens.shape[1], data)
    return tokens


def save_analysis(similarity: LayerSimilarity, proposal: PlanProposal, output: str | Path, *, overwrite: bool = False, extra: dict[str, Any] | None = None) -> AnalysisOutputs:
    """Write ``cka.json``, ``plan.json`` and the two PNG figures into the folder ``output``, atomically.

    ``extra`` (such as the source id and the data path) is stored at the top of ``cka.json``.

    Raises:
        OutputExistsError: when ``output`` exists and ``overwrite`` is false.
    """
    from mgm2fp.analysis.plots import plot_cka_heatmap, plot_consecutive_cka
    from mgm2fp.saving import atomic_directory, write_json

    target = Path(output).expanduser().absolute()
    with atomic_directory(target, overwrite=overwrite) as folder:
        write_json(folder / CKA_FILE, {**(extra or {}), **similarity.to_dict()})
        write_json(folder / PLAN_FILE, proposal.to_dict())
        plot_cka_heatmap(similarity.matrix, folder / HEATMAP_FILE, boundary=proposal.boundary)
        plot_consecutive_cka(similarity.per_level, similarity.timesteps, folder / CONSECUTIVE_FILE, boundary=proposal.boundary)
    return AnalysisOutputs(folder=target, cka=target / CKA_FILE, plan=target / PLAN_FILE, heatmap=target / HEATMAP_FILE, consecutive=target / CONSECUTIVE_FILE)


def read_plan(path: str | Path) -> LayerPlan:
    """Read a layer plan from a ``plan.json`` file, or from a folder that contains one.

    Raises:
        LayerPlanError: when the file is missing, is not valid JSON, or does not describe a plan.
    """
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / PLAN_FILE
    if not file.is_file():
        raise LayerPlanError(f"layer plan '{file}' not found; pass a plan.json written by `mgm2fp analyze`, its folder, or auto")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LayerPlanError(f"layer plan '{file}' is not valid JSON: {error}") from error
    try:
        return LayerPlan.from_dict(data)
    except LayerPlanError as error:
        raise LayerPlanError(f"layer plan '{file}' is invalid: {error}") from error
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise LayerPlanError(f"layer plan '{file}' is invalid ({type(error).__name__}: {error}); it needs pre, fixed_point, post and num_source_blocks") from error
