"""Low-rank adapters (LoRA, through peft) on the shared fixed-point block.

One adapter serves every iteration, or one adapter per range of iterations. The second form
relaxes the weight tying, so the shared block can act differently at different solver iterations
at the cost of a few low-rank matrices per range.
Only the adapters train; the rest of the model is frozen. A single adapter can be merged into the
shared block on save, which gives an ordinary fixed-point model; per-iteration adapters cannot be
merged into one block and are saved beside the weights in ``adapter_model.safetensors``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mgm2fp.errors import ConfigError
from mgm2fp.fixed_point.model import FixedPointMGM
from mgm2fp.training.recipe import LoraSettings

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def adapter_names(settings: LoraSettings) -> list[str]:
    """Adapter names: ``default`` for one adapter, ``iterations_A_B`` (or ``iterations_A_end``) per range."""
    if not settings.iteration_ranges:
        return ["default"]
    return [f"iterations_{first}_{'end' if last is None else last}" for first, last in settings.iteration_ranges]


def _target_names(model: FixedPointMGM, settings: LoraSettings) -> list[str]:
    """Full names of the Linear layers inside the shared block that get an adapter."""
    prefix = "fixed_point_block.layers."
    names = [name for name, module in model.named_modules() if name.startswith(prefix) and isinstance(module, nn.Linear)]
    if settings.target_modules:
        names = [name for name in names if any(name == suffix or name.endswith("." + suffix) for suffix in settings.target_modules)]
    if not names:
        wanted = ", ".join(settings.target_modules or ["any Linear layer"])
        raise ConfigError(f"LoRA target_modules ({wanted}) match no Linear layer of the shared block; name layers such as attn_qkv or mlp.0")
    return names


def apply_lora(model: FixedPointMGM, settings: LoraSettings) -> list[nn.Module]:
    """Inject the adapters into ``model``'s shared block, freeze everything else, and return the adapted layers.

    Raises:
        ConfigError: for a model without a shared block or targets that match nothing.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, FixedPointMGM):
        raise ConfigError(f"LoRA adapters go on the shared block of a fixed-point model, but the model is a plain {model.family} model; fine-tune it fully (drop the lora section)")
    targets = _target_names(model, settings)
    for name in adapter_names(settings):
        config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets, bias="none")
        with warnings.catch_warnings():
            # peft warns that a second adapter joins the first; several adapters are intended here.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(config, model, adapter_name=name)

    layers = [module for module in model.modules() if isinstance(module, LoraLayer)]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for layer in layers:
        for name in ("lora_A", "lora_B"):
            for parameter in getattr(layer, name).parameters():
                parameter.requires_grad_(True)
    if settings.iteration_ranges:
        _install_iteration_switch(model, layers, settings)
    else:
        _activate(layers, "default")
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    logger.info("LoRA rank %d on %d layers of the shared block, %d adapter(s): %d trainable parameters", settings.rank, len(targets), len(adapter_names(settings)), trainable)
    return layers


def _activate(layers: list[nn.Module], name: str) -> None:
    # NOTE: peft's set_adapter() would also switch requires_grad off for the other adapters, which
    # breaks training several adapters in one graph, so the active adapter is set directly
    # (peft 0.21 stores it in LoraLayer._active_adapter).
    for layer in layers:
        layer._active_adapter = [name]


def adapter_for_iteration(settings: LoraSettings, iteration: int) -> str:
    """Name of the adapter used at 0-indexed solver ``iteration`` (no-gradient iterations count)."""
    names = adapter_names(settings)
    for name, (first, last) in zip(names, settings.iteration_ranges or [(0, None)]):
        if first <= iteration and (last is None or iteration <= last):
            return name
    return names[-1]


def _install_iteration_switch(model: FixedPointMGM, layers: list[nn.Module], settings: LoraSettings) -> None:
    """Make ``model`` pick the adapter by iteration: the count restarts at every forward pass."""
    step = model.fixed_point_step
    forward_with_state = model.forward_with_state
    hidden_states = model.hidden_states
    counter = {"iteration": 0}

    def switching_step(hidden: torch.Tensor, h_inj: torch.Tensor, context: Any) -> torch.Tensor:
        _activate(layers, adapter_for_iteration(settings, counter["iteration"]))
        counter["iteration"] += 1
        return step(hidden, h_inj, context)

    def counting_forward(*args: Any, **kwargs: Any) -> Any:
        counter["iteration"] = 0
        return forward_with_state(*args, **kwargs)

    def counting_hidden_states(*args: Any, **kwargs: Any) -> Any:
        counter["iteration"] = 0
        return hidden_states(*args, **kwargs)

    model.fixed_point_step = switching_step  # type: ignore[method-assign]
    model.forward_with_state = counting_forward  # type: ignore[method-assign]
    model.hidden_states = counting_hidden_states  # type: ignore[method-assign]


def _replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def remove_lora(model: FixedPointMGM, *, merge: bool) -> dict[str, torch.Tensor]:
    """Replace every adapted layer by its base layer, merging the adapter first when ``merge``.

    Returns the adapter tensors (``{layer name}.lora_{A,B}.{adapter}.weight``) that were removed.
    """
    from peft.tuners.lora import LoraLayer

    adapters: dict[str, torch.Tensor] = {}
    adapted = [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    for name, layer in adapted:
        for kind in ("lora_A", "lora_B"):
            for adapter, linear in getattr(layer, kind).items():
                adapters[f"{name}.{kind}.{adapter}.weight"] = linear.weight.detach().cpu().clone()
        if merge:
            layer.merge(adapter_names=["default"])
        _replace_module(model, name, layer.get_base_layer())
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return adapters


def save_adapters(adapters: dict[str, torch.Tensor], folder: Path) -> None:
    """Write unmerged adapter tensors to ``folder/adapter_model.safetensors``."""
    from mgm2fp.saving import save_state_dict

    save_state_dict(adapters, folder / ADAPTER_WEIGHTS, metadata={"mgm2fp_model_type": "lora"})


def load_adapters(model: FixedPointMGM, folder: str | Path, settings: LoraSettings | dict[str, Any]) -> FixedPointMGM:
    """Attach adapters saved unmerged in ``folder`` to ``model`` (loaded from the same folder) and return it.

    ``settings`` is the ``lora`` section recorded under ``finetune.recipe`` in the folder's config.

    Raises:
        CheckpointError: when the saved adapter tensors do not match the settings.
    """
    from safetensors.torch import load_file

    from mgm2fp.errors import CheckpointError

    if isinstance(settings, dict):
        settings = LoraSettings.model_validate(settings)
    apply_lora(model, settings)
    saved = load_file(str(Path(folder) / ADAPTER_WEIGHTS))
    expected = {name: parameter for name, parameter in model.named_parameters() if ".lora_A." in name or ".lora_B." in name}
    if set(saved) != set(expected):
        raise CheckpointError(f"'{folder}/{ADAPTER_WEIGHTS}' does not match the lora settings ({len(saved)} tensors saved, {len(expected)} expected); pass the settings recorded in its config.json")
    with torch.no_grad():
        for name, parameter in expected.items():
            parameter.copy_(saved[name].to(parameter.dtype))
    return model.eval()
