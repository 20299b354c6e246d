"""FID and Inception Score of generated images, through torchmetrics (with torch-fidelity's Inception-v3).

Images are float tensors in [0, 1] or uint8 tensors in [0, 255], ``[N, 3, H, W]``, given whole
or as an iterable of batches. They are converted to uint8 before feature extraction, because the
reference Inception-v3 expects uint8 input. The Inception weights come from
``inception_weights=PATH`` or from torch-fidelity's download cache (``$TORCH_HOME/hub/checkpoints``),
which is filled on first use unless ``HF_HUB_OFFLINE`` is set. torch-fidelity reads the weights
with an unrestricted ``torch.load``, so mgm2fp first checks the file with ``weights_only=True``
and rejects a pickle that would run code. Any ``nn.Module`` that maps uint8 images
``[N, 3, H, W]`` to features ``[N, d]`` (FID) or logits ``[N, classes]`` (IS) can replace
Inception with ``feature=``; tests use a small one and download nothing.
"""

from __future__ import annotations

import itertools
import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from mgm2fp.errors import ConfigError, SourceNotFoundError
from mgm2fp.images import to_uint8
from mgm2fp.pth_weights import load_weights_only

logger = logging.getLogger(__name__)

Images = torch.Tensor | Iterable[torch.Tensor]
INSTALL_HINT = "install the image extras (pip install 'mgm2fp[images]', which brings torch-fidelity) or pass feature= with your own extractor"


def _require_torch_fidelity() -> None:
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not _TORCH_FIDELITY_AVAILABLE:
        raise ConfigError(f"the Inception-v3 feature extractor needs torch-fidelity, which is not installed; {INSTALL_HINT}")


def inception_weights_path(inception_weights: str | Path | None = None) -> Path:
    """Return a checked path to the Inception-v3 weights torch-fidelity uses.

    With ``inception_weights`` None, the file is taken from torch-fidelity's download cache,
    and downloaded there by torch-fidelity's own URL when absent and the network allows.

    Raises:
        SourceNotFoundError: when the file is missing and cannot be downloaded.
        CheckpointError: when the file's pickle would run code.
        ConfigError: when the cache is needed and torch-fidelity is not installed.
    """
    if inception_weights is not None:
        path = Path(inception_weights).expanduser()
        if not path.is_file():
            raise SourceNotFoundError(f"Inception weights '{path}' not found; pass the path of torch-fidelity's weights-inception-2015-12-05-6726825d.pth")
    else:
        _require_torch_fidelity()
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(URL_INCEPTION_V3).name
        if not path.is_file():
            if _offline():
                raise SourceNotFoundError(f"Inception weights are not in the cache '{path}' and HF_HUB_OFFLINE is set; download them once with network access, or pass inception_weights=PATH")
            logger.warning("Inception weights not in the cache %s; downloading them", path)
            try:
                torch.hub.load_state_dict_from_url(URL_INCEPTION_V3, progress=False, weights_only=True)
            except (OSError, RuntimeError) as error:
                raise SourceNotFoundError(f"Inception weights are not in the cache '{path}' and could not be downloaded ({error}); pass inception_weights=PATH") from error
    load_weights_only(path)  # raises CheckpointError for a pickle that would run code
    return path


def _offline() -> bool:
    """True when the user asked for no network access (``HF_HUB_OFFLINE``, as for hub models)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def inception_feature_extractor(output: str, *, inception_weights: str | Path | None = None) -> nn.Module:
    """Build torch-fidelity's Inception-v3 returning ``output`` (``"2048"`` pool features or ``"logits_unbiased"``).

    Raises:
        ConfigError: when torch-fidelity is not installed.
    """
    path = inception_weights_path(inception_weights)
    _require_torch_fidelity()
    from torchmetrics.image.fid import NoTrainInceptionV3

    return NoTrainInceptionV3(name="inception-v3-compat", features_list=[output], feature_extractor_weights_path=str(path))


def frechet_inception_distance(
    real: Images,
    fake: Images,
    *,
    feature: nn.Module | None = None,
    inception_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> float:
    """Return the FID between two image sets (Inception-v3 pool features unless ``feature`` is given).

    Each set needs at least two images; a meaningful FID needs thousands (the usual protocol
    uses 50,000 generated images).

    Raises:
        ConfigError: when a set has fewer than two images, or torch-fidelity is missing.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    extractor = feature if feature is not None else inception_feature_extractor("2048", inception_weights=inception_weights)
    real_batches = _batches(real)
    first = next(real_batches, None)
    if first is None:
        raise ConfigError("FID needs at least two real images (got none)")
    # torchmetrics runs one image of this size through the extractor to count its features.
    metric = FrechetInceptionDistance(feature=extractor, normalize=False, input_img_size=tuple(first.shape[1:])).to(device)
    counts = {True: _update(metric, itertools.chain([first], real_batches), device, real=True), False: _update(metric, fake, device, real=False)}
    if min(counts.values()) < 2:
        raise ConfigError(f"FID needs at least two real and two generated images (got {counts[True]} and {counts[False]})")
    return float(metric.compute())


def inception_score(
    images: Images,
    *,
    feature: nn.Module | None = None,
    inception_weights: str | Path | None = None,
    splits: int = 10,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """Return the Inception Score (mean, standard deviation over ``splits``) of an image set.

    ``feature`` replaces Inception-v3 with a module returning class logits.

    Raises:
        ConfigError: when there are fewer images than splits, or torch-fidelity is missing.
    """
    from torchmetrics.image.inception import InceptionScore

    extractor = feature if feature is not None else inception_feature_extractor("logits_unbiased", inception_weights=inception_weights)
    with warnings.catch_warnings():
        # torchmetrics warns that the score keeps every feature in memory, which is what it computes.
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = InceptionScore(feature=extractor, splits=splits, normalize=False).to(device)
    count = _update(metric, images, device)
    if count < splits:
        raise ConfigError(f"the Inception Score over {splits} splits needs at least {splits} images (got {count}); pass fewer splits")
    mean, std = metric.compute()
    return float(mean), float(std)


def _batches(images: Images) -> Iterator[torch.Tensor]:
    return iter([images]) if torch.is_tensor(images) else iter(images)


def _update(metric: nn.Module, images: Images, device: str | torch.device, **kwargs: bool) -> int:
    """Feed ``images`` (a tensor or an iterable of batches) to ``metric`` as uint8; return how many."""
    count = 0
    for batch in _batches(images):
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ConfigError(f"expected RGB image batches [N, 3, H, W], got shape {list(batch.shape)}")
        with torch.no_grad():
            metric.update(to_uint8(batch).to(device), **kwargs)
        count += batch.shape[0]
    return count
