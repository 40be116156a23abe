"""Per-sample image similarity metrics: MSE, PSNR and SSIM.

Every function takes two image batches ``[B, C, H, W]`` (float, values in ``[0, 1]``) and returns
a CPU ``float64`` tensor ``[B]`` with one value per sample, so a caller can report batch means
as well as the per-sample values that the SoK paper's BRR/WSRR (App. C) need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from skimage.metrics import structural_similarity

from gradleak.errors import GradleakError

__all__ = ["MetricInfo", "check_image_pair", "mse", "psnr", "ssim", "ssim_window"]


@dataclass(frozen=True)
class MetricInfo:
    """What a metric means: its name, which direction is better (for the attack) and its value
    range; for the two leakage metrics also the paper's ``threshold`` and the config key that
    sets it (``threshold_key``, e.g. ``metrics.psnr_threshold``)."""

    name: str
    higher_is_better: bool
    range: tuple[float, float]
    threshold: float | None = None
    threshold_key: str | None = None

    @property
    def direction(self) -> str:
        """``"higher"`` or ``"lower"``: the direction of more leakage."""
        return "higher" if self.higher_is_better else "lower"

    def passes(self, value: float, threshold: float | None = None) -> bool:
        """Whether ``value`` is on the leaking side of ``threshold`` (default: the paper's),
        inclusive: PSNR >= 18, LPIPS <= 0.1."""
        limit = self.threshold if threshold is None else threshold
        if limit is None:
            raise ValueError(f"metric {self.name} has no leakage threshold")
        return value >= limit if self.higher_is_better else value <= limit


def check_image_pair(x: torch.Tensor, y: torch.Tensor, *, names: tuple[str, str] = ("x", "y")
                     ) -> None:
    """Raise :class:`GradleakError` unless ``x``, ``y`` are equal-shaped non-empty 4-D tensors."""
    for name, t in zip(names, (x, y), strict=True):
        if not isinstance(t, torch.Tensor):
            raise GradleakError(
                f"{name} must be a torch.Tensor [B, C, H, W], got {type(t).__name__}"
            )
        if t.ndim != 4:
            raise GradleakError(f"{name} must be 4-D [B, C, H, W], got shape {tuple(t.shape)}")
        if t.numel() == 0:
            raise GradleakError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    if x.shape != y.shape:
        raise GradleakError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )


def _as_float64(t: torch.Tensor) -> torch.Tensor:
    # float64 on CPU: metrics are for reporting, and float32 loses digits for tiny MSEs (high PSNR).
    return t.detach().to(device="cpu", dtype=torch.float64)


def _check_data_range(data_range: float) -> None:
    ok = isinstance(data_range, int | float) and not isinstance(data_range, bool)
    if not (ok and math.isfinite(data_range) and data_range > 0):
        raise GradleakError(f"data_range must be a finite number > 0, got {data_range!r}")


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample: ``[B, C, H, W] x 2 -> [B]``."""
    check_image_pair(x, y)
    return (_as_float64(x) - _as_float64(y)).square().flatten(1).mean(dim=1)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per sample in dB, ``10 log10(data_range^2 / MSE)``: ``-> [B]``.

    Computed per sample (then averaged by the caller), as the GIA literature reports it, not from
    the batch MSE. Identical images have MSE 0 and get ``+inf`` (never NaN or an error); reports
    that need finite numbers clamp it (see :func:`gradleak.metrics.score`).
    """
    _check_data_range(data_range)
    err = mse(x, y)
    # Explicit +inf for exact matches rather than relying on a division by zero.
    safe = torch.where(err > 0, err, torch.ones_like(err))
    value = 10.0 * torch.log10(torch.as_tensor(float(data_range) ** 2, dtype=torch.float64) / safe)
    return torch.where(err > 0, value, torch.full_like(err, math.inf))


def ssim_window(height: int, width: int) -> int:
    """SSIM window side: skimage's default 7, or the largest odd side that fits a smaller image."""
    side = min(7, height, width)
    if side % 2 == 0:
        side -= 1
    if side < 3:
        raise GradleakError(
            f"ssim needs images of at least 3x3 pixels, got {height}x{width}"
        )
    return side


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per sample (``skimage.metrics.structural_similarity``): ``-> [B]``.

    Uses skimage's defaults (uniform window, sample covariance) with ``data_range`` fixed to the
    image range rather than inferred from the data, and a window of ``min(7, largest odd side
    that fits)`` so 3x3 .. 6x6 images work. Colour images are scored per channel and averaged.
    Values are in ``[-1, 1]``; identical images give 1.
    """
    check_image_pair(x, y)
    _check_data_range(data_range)
    height, width = x.shape[-2:]
    win = ssim_window(height, width)
    xs, ys = _as_float64(x).numpy(), _as_float64(y).numpy()
    values = [
        structural_similarity(a, b, channel_axis=0, data_range=data_range, win_size=win)
        for a, b in zip(xs, ys, strict=True)
    ]
    return torch.from_numpy(np.asarray(values, dtype=np.float64))
