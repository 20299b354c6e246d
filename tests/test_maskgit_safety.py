"""A .pth whose pickle would run code is rejected, and the code never runs."""

from __future__ import annotations

import pathlib

import pytest
import torch

import mgm2fp
from mgm2fp.errors import CheckpointError
from mgm2fp.pth_weights import read_model_weights, strip_wrapper_prefixes
from mgm2fp.vq import load_vq_decoder
from tests.conftest import HALTON_TINY, run_cli


class CreatesMarkerFile:
    """Unpickling this object would create ``path`` (``pathlib.Path.touch``)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def write_unsafe_checkpoint(folder: pathlib.Path, marker: pathlib.Path, name: str = "unsafe.pth") -> pathlib.Path:
    """A Halton-MaskGIT release with an extra entry whose unpickling would run code."""
    checkpoint = torch.load(HALTON_TINY / "halton_h64_d6.pth", map_location="cpu", weights_only=True)
    checkpoint["trainer"] = CreatesMarkerFile(marker)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    torch.save(checkpoint, path)
    return path


def test_unsafe_pickle_rejected_by_reader(tmp_path):
    marker = tmp_path / "code-ran"
    path = write_unsafe_checkpoint(tmp_path, marker)
    with pytest.raises(CheckpointError, match="not a plain weights file") as error:
        read_model_weights(path)
    assert "unsupported GLOBAL" in str(error.value)
    assert not marker.exists()


def test_unsafe_pickle_rejected_by_load(tmp_path):
    marker = tmp_path / "code-ran"
    path = write_unsafe_checkpoint(tmp_path, marker)
    with pytest.raises(CheckpointError, match="not a plain weights file"):
        mgm2fp.load(path, num_heads=4)
    with pytest.raises(CheckpointError, match="not a plain weights file"):
        mgm2fp.convert(path, share_layers="1-4", num_heads=4)
    assert not marker.exists()


def test_unsafe_pickle_rejected_by_cli(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    path = write_unsafe_checkpoint(tmp_path, marker)
    code, out, err = run_cli(["convert", path, "--share-layers", "1-4", "--num-heads", "4", "--output", tmp_path / "fp"], capsys)
    assert code == 1
    assert "not a plain weights file" in err
    assert "Traceback" not in err
    assert not marker.exists()
    assert not (tmp_path / "fp").exists()


def test_unsafe_vq_file_rejected(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "vq_ds16_c2i.pt"
    torch.save({"model": {"quantize.embedding.weight": torch.zeros(4, 2)}, "config": CreatesMarkerFile(marker)}, path)
    with pytest.raises(CheckpointError, match="not a plain weights file"):
        load_vq_decoder(path)
    assert not marker.exists()


def test_truncated_file_rejected(tmp_path):
    data = (HALTON_TINY / "halton_h64_d6.pth").read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_model_weights(path)


def test_duplicate_keys_after_prefix_removal_rejected():
    tensor = torch.zeros(1)
    with pytest.raises(CheckpointError, match="duplicates"):
        strip_wrapper_prefixes({"module.a": tensor, "a": tensor})
