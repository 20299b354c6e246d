"""Surgery: turn a source MGM into a fixed-point MGM by a layer plan, an init rule and an injection.

Surgery never looks inside a block: it picks blocks by index from ``model.blocks``, copies or
averages their state dicts, and wraps the shared block with the injection (arXiv 2605.31215,
section on converting pre-trained models).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mgm2fp.families.base import MaskedGenerativeModel
from mgm2fp.fixed_point.injection import INJECTIONS
from mgm2fp.fixed_point.model import FixedPointMGM
from mgm2fp.errors import ConfigError, LayerPlanError
from mgm2fp.layer_plan import LayerPlan, make_plan

logger = logging.getLogger(__name__)


def convert(
    model: MaskedGenerativeModel | str | Path,
    share_layers: str | None = None,
    *,
    pre_layers: str | None = None,
    fixed_point_layers: str | None = None,
    post_layers: str | None = None,
    plan: LayerPlan | None = None,
    preset: str | None = None,
    init: str | int = "first",
    injection: str = "fpdm",
    num_iterations: int | None = None,
    **load_options: Any,
) -> FixedPointMGM:
    """Convert ``model`` (a loaded model, or a source for :func:`mgm2fp.load`) into a fixed-point MGM.

    Give the layers as ``share_layers="A-B"`` or as ``pre_layers``, ``fixed_point_layers`` and
    ``post_layers`` (0-indexed inclusive ranges), name a ``preset`` of
    :data:`mgm2fp.layer_plan.PRESETS` (``"fp-maskgit"``), or pass a ready :class:`LayerPlan`. ``init``
    chooses the shared block's weights: ``first``, ``middle``, ``last``, ``mean`` of the
    fixed-point range, or a block index. ``num_iterations`` defaults to the number of source
    blocks that the pre and post blocks do not cover, so one step costs as much as in the source.
    A model passed in is left unchanged; a source given by name is streamed, reading only the
    blocks that the plan keeps.

    Raises:
        LayerPlanError: for an invalid layer plan or init.
        ConfigError: for an unknown injection.
    """
    if injection not in INJECTIONS:
        raise ConfigError(f"unknown injection '{injection}'; use one of {', '.join(INJECTIONS)}")

    def choose_plan(num_blocks: int) -> LayerPlan:
        if plan is not None and preset is not None:
            raise LayerPlanError(f"give either a LayerPlan or preset '{preset}', not both")
        if plan is not None:
            if plan.num_source_blocks != num_blocks:
                raise LayerPlanError(f"the layer plan was made for {plan.num_source_blocks} blocks but the model has {num_blocks}; make the plan for this model")
            return plan
        return make_plan(num_blocks, share_layers=share_layers, pre_layers=pre_layers, fixed_point_layers=fixed_point_layers, post_layers=post_layers, init=init, preset=preset)

    if isinstance(model, MaskedGenerativeModel):
        if load_options:
            raise ConfigError(f"load options {sorted(load_options)} apply only when the model is given by name or path")
        return convert_model(model, choose_plan(model.num_blocks), injection=injection, num_iterations=num_iterations, copy_weights=True)

    from mgm2fp.loading import load

    chosen: dict[str, LayerPlan] = {}

    def keep_blocks(num_blocks: int) -> set[int]:
        chosen["plan"] = choose_plan(num_blocks)
        return chosen["plan"].kept_blocks

    source = load(model, keep_blocks=keep_blocks, **load_options)
    layer_plan = chosen.get("plan") or choose_plan(source.num_blocks)
    converted = convert_model(source, layer_plan, injection=injection, num_iterations=num_iterations, copy_weights=False)
    return converted.to(load_options.get("device", "cpu"))


def convert_model(model: MaskedGenerativeModel, plan: LayerPlan, *, injection: str = "fpdm", num_iterations: int | None = None, copy_weights: bool = True) -> FixedPointMGM:
    """Apply ``plan`` to a loaded model. With ``copy_weights`` false the model's modules are moved, not copied."""
    if isinstance(model, FixedPointMGM):
        raise ConfigError("the model is already a fixed-point model; convert its source checkpoint instead")
    if plan.num_source_blocks != model.num_blocks:
        raise LayerPlanError(f"the layer plan was made for {plan.num_source_blocks} blocks but the model has {model.num_blocks}")
    if isinstance(plan.init, int) and plan.init not in plan.fixed_point:
        logger.warning("init block %d lies outside the fixed-point range %s; using its weights anyway", plan.init, list(plan.fixed_point))

    take = copy.deepcopy if copy_weights else (lambda module: module)
    source_blocks = model.blocks
    source_parameters = model.num_parameters()
    pre_blocks = [take(source_blocks[index]) for index in plan.pre]
    post_blocks = [take(source_blocks[index]) for index in plan.post]
    shared = _initial_shared_block(source_blocks, plan.init_blocks, copy_weights=copy_weights)

    model.blocks = nn.ModuleList()
    try:
        base = take(model)
    finally:
        model.blocks = source_blocks
    base.blocks = nn.ModuleList()

    metadata = {
        "source": {
            "id": model.config.get("_name_or_path"),
            "revision": getattr(model, "source_revision", None),
            "num_blocks": plan.num_source_blocks,
            "num_parameters": source_parameters,
        }
    }
    source_folder = getattr(model, "source_folder", None)
    converted = FixedPointMGM(
        base,
        pre_blocks=pre_blocks,
        fixed_point_layers=[shared],
        post_blocks=post_blocks,
        plan=plan,
        injection=injection,
        num_iterations=num_iterations,
        metadata=metadata,
    )
    converted.source_folder = source_folder
    reference = next(shared.parameters())
    converted.fixed_point_block.injection.to(device=reference.device, dtype=reference.dtype)
    logger.info("converted %s: %s, %d -> %d parameters", metadata["source"]["id"], plan.describe(), source_parameters, converted.num_parameters())
    return converted.train(model.training)


def _initial_shared_block(blocks: nn.ModuleList, indices: tuple[int, ...], *, copy_weights: bool) -> nn.Module:
    """Return the shared block: a copy of one block, or the parameter-wise mean of several."""
    if len(indices) == 1:
        block = blocks[indices[0]]
        return copy.deepcopy(block) if copy_weights else block
    shared = copy.deepcopy(blocks[indices[0]])
    states = [blocks[index].state_dict() for index in indices]
    averaged = {}
    for name, tensor in states[0].items():
        if tensor.is_floating_point():
            averaged[name] = torch.stack([state[name].float() for state in states]).mean(dim=0).to(tensor.dtype)
        else:
            averaged[name] = tensor.clone()
    shared.load_state_dict(averaged)
    return shared
