"""Writing the result of a training run: the model in its loadable layout, ``recipe.yaml`` and a model card section.

The model is written to a temporary folder beside the output and its files are then moved in
one by one with ``config.json`` last, so the output folder (which also contains ``metrics.jsonl``
and ``checkpoints/``) never looks like a complete model before every weight is in place.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard

from mgm2fp.cards import finetune_section
from mgm2fp.errors import ConfigError
from mgm2fp.families.base import MaskedGenerativeModel
from mgm2fp.families.registry import get_family
from mgm2fp.fixed_point.model import FixedPointMGM
from mgm2fp.training.recipe import Recipe, recipe_to_yaml

logger = logging.getLogger(__name__)


def _rebuild(model: MaskedGenerativeModel, state_dict: dict[str, torch.Tensor]) -> MaskedGenerativeModel:
    """Build a full, unsharded copy of ``model`` on the CPU from ``state_dict`` (after FSDP or DeepSpeed)."""
    if isinstance(model, FixedPointMGM):
        from mgm2fp.fixed_point.loader import build_fixed_point_model

        fresh: MaskedGenerativeModel = build_fixed_point_model(model.to_config())
    else:
        fresh = get_family(model.family).build(model.source_config())
    fresh.load_state_dict(state_dict)
    for attribute in ("source_folder", "metadata"):
        if hasattr(model, attribute):
            setattr(fresh, attribute, getattr(model, attribute))
    return fresh


def _write_model(model: MaskedGenerativeModel, folder: Path, summary: dict[str, Any], recipe: Recipe) -> None:
    """Write ``model`` into the empty ``folder`` in the layout :func:`mgm2fp.load` reads."""
    section = finetune_section({"finetune": summary})
    if isinstance(model, FixedPointMGM):
        from mgm2fp.fixed_point.loader import save_pretrained

        # The card's fine-tuning section comes from the "finetune" entry of the config.
        model.metadata["finetune"] = summary
        save_pretrained(model, folder, overwrite=True, extra_config={"finetune": summary})
    else:
        family = get_family(model.family)
        if family.save is None:
            raise ConfigError(f"saving a trained {model.family} model is not supported yet; add a save function to its family")
        family.save(model, folder, {"finetune": summary})
        title = f"# {model.family} model trained with mgm2fp\n\nSource: `{model.config.get('_name_or_path') or 'built from a config'}`.\n\n"
        ModelCard(f"---\nlibrary_name: mgm2fp\ntags:\n- mgm2fp\n- {model.family}\n---\n\n{title}{section}").save(folder / "README.md")
    (folder / "recipe.yaml").write_text(recipe_to_yaml(recipe))


def export_model(model: MaskedGenerativeModel, output_dir: Path, *, summary: dict[str, Any], recipe: Recipe, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save the trained ``model`` into ``output_dir``, merging or saving LoRA adapters as the recipe sets.

    ``state_dict`` is the gathered full state of a sharded run; the model is then rebuilt on the CPU.
    """
    if state_dict is not None:
        model = _rebuild(model, state_dict)
    model = model.eval()
    adapters: dict[str, torch.Tensor] = {}
    if recipe.lora is not None and isinstance(model, FixedPointMGM):
        from mgm2fp.training.lora import remove_lora

        merge = recipe.lora.merge_on_save and not recipe.lora.iteration_ranges
        if recipe.lora.merge_on_save and not merge:
            logger.warning("per-iteration LoRA adapters cannot be merged into one shared block; saving them unmerged in adapter_model.safetensors")
        adapters = remove_lora(model, merge=merge)
        summary["lora"] = {"merged": merge, "settings": recipe.lora.model_dump(mode="json")}
        if merge:
            adapters = {}

    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=output_dir))
    try:
        target = staging / "model"
        target.mkdir()
        _write_model(model, target, summary, recipe)
        if adapters:
            from mgm2fp.training.lora import save_adapters

            save_adapters(adapters, target)
        names = sorted((path.name for path in target.iterdir()), key=lambda name: name == "config.json")
        for name in names:
            os.replace(target / name, output_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("saved the trained model in %s", output_dir)
    return output_dir
