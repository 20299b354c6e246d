"""FID and Inception Score through torchmetrics, with small feature extractors (no download)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mgm2fp.errors import CheckpointError, ConfigError, SourceNotFoundError
from mgm2fp.evaluation.images import frechet_inception_distance, inception_score, inception_weights_path


class PooledColours(nn.Module):
    """12 features: the mean colour of each image quadrant."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.uint8
        return nn.functional.adaptive_avg_pool2d(images.float() / 255.0, 2).flatten(1)


class ChannelClassifier(nn.Module):
    """Logits over 3 classes: confident for the brightest channel."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().mean(dim=(2, 3)) * 10.0


def test_fid_identical_sets_near_zero():
    torch.manual_seed(0)
    images = torch.rand(48, 3, 8, 8)
    assert abs(frechet_inception_distance(images, images.clone(), feature=PooledColours())) < 1e-6


def test_fid_batches_equal_whole_set():
    torch.manual_seed(1)
    real, fake = torch.rand(40, 3, 8, 8), torch.rand(40, 3, 8, 8) * 0.8
    whole = frechet_inception_distance(real, fake, feature=PooledColours())
    batched = frechet_inception_distance(iter(real.split(16)), fake.split(7), feature=PooledColours())
    assert whole > 0.1
    assert batched == pytest.approx(whole, rel=1e-6)


def test_fid_needs_two_images():
    with pytest.raises(ConfigError, match="at least two"):
        frechet_inception_distance(torch.rand(4, 3, 8, 8), torch.rand(1, 3, 8, 8), feature=PooledColours())


@pytest.mark.filterwarnings("ignore:std.*degrees of freedom:UserWarning")  # one split has no spread
def test_inception_score_bounds():
    # One confident class per image, spread evenly over 3 classes: IS = 3. A constant image: IS = 1.
    images = torch.zeros(30, 3, 4, 4)
    for index in range(30):
        images[index, index % 3] = 1.0
    mean, _ = inception_score(images, feature=ChannelClassifier(), splits=1)
    assert mean == pytest.approx(3.0, rel=1e-3)
    same, spread = inception_score(torch.full((12, 3, 4, 4), 0.5), feature=ChannelClassifier(), splits=3)
    assert same == pytest.approx(1.0, abs=1e-6)
    assert spread == pytest.approx(0.0, abs=1e-6)


def test_inception_score_needs_enough_images():
    with pytest.raises(ConfigError, match="at least 10 images"):
        inception_score(torch.rand(4, 3, 4, 4), feature=ChannelClassifier(), splits=10)


def test_unsafe_inception_weights_rejected(tmp_path):
    marker = tmp_path / "code-ran"

    class CreatesMarkerFile:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "inception.pth"
    torch.save({"fc.weight": torch.zeros(2), "extra": CreatesMarkerFile()}, path)
    with pytest.raises(CheckpointError, match="not a plain weights file"):
        inception_weights_path(path)
    assert not marker.exists()


def test_missing_inception_weights_path(tmp_path):
    with pytest.raises(SourceNotFoundError, match="not found"):
        inception_weights_path(tmp_path / "absent.pth")


def test_default_inception_offline(tmp_path, monkeypatch):
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = SourceNotFoundError if _TORCH_FIDELITY_AVAILABLE else ConfigError
    with pytest.raises(expected):
        frechet_inception_distance(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))
