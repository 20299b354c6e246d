"""Save and load fixed-point models in the mgm2fp folder layout, and register it as a family.

A folder contains ``config.json`` (``model_type: mgm2fp``, the source family and its config, the
source id and revision, the layer plan, the injection and the default iterations),
``model.safetensors``, a model card ``README.md`` and the source's tokenizer files when it had any.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from mgm2fp.cards import build_model_card
from mgm2fp.dtypes import dtype_name, parse_dtype
from mgm2fp.errors import CheckpointError, ConfigError, SourceNotFoundError
from mgm2fp.families.registry import Family, get_family, register_family
from mgm2fp.fixed_point.model import FixedPointMGM
from mgm2fp.hub import ResolvedSource
from mgm2fp.layer_plan import LayerPlan
from mgm2fp.saving import atomic_directory, copy_tokenizer_files, save_state_dict, write_json
from mgm2fp.weights import SafetensorsReader, check_shapes, expected_shapes

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"


def save_pretrained(model: FixedPointMGM, output_dir: str | Path, *, overwrite: bool = False, card_sections: list[str] | None = None, extra_config: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``output_dir`` atomically and return the folder.

    Raises:
        OutputExistsError: when the folder exists and ``overwrite`` is false.
        ConfigError: when ``model`` is not a fixed-point model.
    """
    if not isinstance(model, FixedPointMGM):
        raise ConfigError(f"save_pretrained writes fixed-point models, not a {type(model).__name__}; convert it first with mgm2fp.convert, or save a source model with its family's save function")
    config = model.to_config()
    config["torch_dtype"] = dtype_name(next(model.parameters()).dtype)
    config.update(extra_config or {})
    source_folder = getattr(model, "source_folder", None)
    with atomic_directory(output_dir, overwrite=overwrite) as folder:
        save_state_dict(model.state_dict(), folder / WEIGHTS_NAME, metadata={"mgm2fp_model_type": "mgm2fp"})
        tokenizer_files = copy_tokenizer_files(source_folder, folder)
        if tokenizer_files:
            config.setdefault("tokenizer", ".")
        write_json(folder / "config.json", config)
        build_model_card(config, sections=card_sections).save(folder / "README.md")
    logger.info("saved %s", output_dir)
    return Path(output_dir)


def build_fixed_point_model(config: dict[str, Any]) -> FixedPointMGM:
    """Build a fixed-point model with fresh weights from its saved ``config``."""
    family = get_family(config["family"])
    base = family.build(config["source_config"])
    plan = LayerPlan.from_dict(config["layer_plan"])
    return FixedPointMGM(
        base,
        pre_blocks=[base.build_block() for _ in plan.pre],
        fixed_point_layers=[base.build_block() for _ in range(int(config.get("fixed_point_depth", 1)))],
        post_blocks=[base.build_block() for _ in plan.post],
        plan=plan,
        injection=config.get("injection", "fpdm"),
        num_iterations=config.get("num_iterations"),
        metadata={key: config[key] for key in ("source", "finetune") if key in config},
    )


def detect(resolved: ResolvedSource) -> bool:
    return resolved.config is not None and resolved.config.get("model_type") == "mgm2fp"


def load(resolved: ResolvedSource, *, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu", num_iterations: int | None = None) -> FixedPointMGM:
    """Load a saved fixed-point model; outputs are bitwise identical to the saved model's."""
    config = resolved.config
    missing = [key for key in ("family", "source_config", "layer_plan") if key not in config]
    if missing:
        raise CheckpointError(f"config.json in '{resolved.folder}' lacks {', '.join(missing)}; it was not written by mgm2fp save_pretrained")
    weights = resolved.weights_file or resolved.folder / WEIGHTS_NAME
    if not weights.is_file():
        raise SourceNotFoundError(f"no {WEIGHTS_NAME} in '{resolved.folder}'; the folder is incomplete, save or download it again")
    reader = SafetensorsReader(weights)
    with torch.device("meta"):
        model = build_fixed_point_model(config)
    check_shapes(expected_shapes(model), reader.shapes, source=str(weights), hint="use the config.json saved with these weights")
    state_dict = reader.read_many({key: key for key in reader.keys}, parse_dtype(dtype) or torch.float32)
    model.load_state_dict(state_dict, strict=True, assign=True)
    if num_iterations is not None:
        model.num_iterations = int(num_iterations)
    model.source_folder = resolved.folder
    model.config_path = resolved.folder / "config.json"
    if (resolved.folder / "adapter_model.safetensors").is_file():
        # TODO: attach per-iteration LoRA adapters here instead of leaving it to the caller.
        logger.warning(
            "'%s' has unmerged LoRA adapters in adapter_model.safetensors, which this model runs without; "
            "attach them with mgm2fp.training.lora.load_adapters(model, folder, config['finetune']['lora']['settings'])",
            resolved.folder,
        )
    return model.to(device).eval()


FIXED_POINT_FAMILY = register_family(
    Family(name="mgm2fp", detect=detect, load=load, build=build_fixed_point_model, description="fixed-point models saved by mgm2fp", overrides=("num_iterations",))
)
