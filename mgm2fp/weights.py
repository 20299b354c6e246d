"""Read and check weights without running code: lazy safetensors access and state-dict checks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from mgm2fp.errors import CheckpointError

logger = logging.getLogger(__name__)

# Called after each tensor is read with (tensors read so far, total tensors, name).
ProgressCallback = Callable[[int, int, str], None]

_progress_callback: ProgressCallback | None = None


@contextmanager
def report_progress(callback: ProgressCallback | None):
    """Within the block, call ``callback`` after each tensor that the loaders read."""
    global _progress_callback
    previous, _progress_callback = _progress_callback, callback
    try:
        yield
    finally:
        _progress_callback = previous


class SafetensorsReader:
    """Lazy access to one safetensors file: header first, tensors only when requested."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            self._handle.__enter__()
            self.keys = list(self._handle.keys())
            self.shapes = {key: tuple(self._handle.get_slice(key).get_shape()) for key in self.keys}
        except (SafetensorError, OSError, RuntimeError) as error:
            raise CheckpointError(f"corrupt or truncated weights file '{self.path}': {error}; download or copy it again") from error

    def read(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        try:
            tensor = self._handle.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError) as error:
            raise CheckpointError(f"could not read tensor '{key}' from '{self.path}': {error}; the file may be corrupt") from error
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        return tensor

    def read_many(self, mapping: Mapping[str, str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Read tensors, renamed by ``mapping`` (checkpoint key -> new key)."""
        out = {}
        total = len(mapping)
        for index, (key, new_key) in enumerate(mapping.items(), start=1):
            out[new_key] = self.read(key, dtype)
            if _progress_callback is not None:
                _progress_callback(index, total, key)
        return out


def expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Return the shape of every entry of ``model.state_dict()`` (works on the meta device)."""
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def check_shapes(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], *, source: str, hint: str) -> None:
    """Raise CheckpointError when tensors are missing, unexpected or mis-shaped.

    ``hint`` finishes the message with what the user can do.
    """
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    mismatched = [f"{name} {list(found[name])} (expected {list(expected[name])})" for name in expected if name in found and tuple(found[name]) != tuple(expected[name])]
    problems = []
    if missing:
        problems.append(f"missing tensors {_preview(missing)}")
    if extra:
        problems.append(f"unexpected tensors {_preview(extra)}")
    if mismatched:
        problems.append(f"mis-shaped tensors {_preview(mismatched)}")
    if problems:
        raise CheckpointError(f"weights in '{source}' do not match their config: {'; '.join(problems)}; {hint}")


def _preview(items: Iterable[str], limit: int = 3) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def assign_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load ``state_dict`` into a model built on the meta device, taking the tensors as they are."""
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
