"""Image grids: ground truth row above reconstruction row."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from gradleak.io import atomic_write


def comparison_grid(truth: torch.Tensor, recon: torch.Tensor, *, min_side: int = 96,
                    pad: int = 2) -> torch.Tensor:
    """``truth, recon [N, C, H, W]`` -> one ``[3, H', W']`` image: truth on top, recon below.

    Small images are upscaled by pixel repetition (nearest) so 32 px results stay legible.
    """
    both = torch.cat([truth, recon]).float().clamp(0, 1)
    if both.shape[1] == 1:
        both = both.repeat(1, 3, 1, 1)
    scale = max(1, min_side // both.shape[-1])
    if scale > 1:
        both = F.interpolate(both, scale_factor=scale, mode="nearest")
    return make_grid(both, nrow=truth.shape[0], padding=pad, pad_value=1.0)


def save_comparison(path: str | Path, truth: torch.Tensor, recon: torch.Tensor) -> None:
    grid = comparison_grid(truth, recon)
    atomic_write(path, lambda p: save_image(grid, p, format="png"))


def save_pair(path: str | Path, original: torch.Tensor, recon: torch.Tensor) -> None:
    """One sample ``[C, H, W]``: the original (left) beside its reconstruction (right)."""
    both = torch.stack([original, recon]).float().clamp(0, 1)
    if both.shape[1] == 1:
        both = both.repeat(1, 3, 1, 1)
    scale = max(1, 96 // both.shape[-1])
    if scale > 1:
        both = F.interpolate(both, scale_factor=scale, mode="nearest")
    grid = make_grid(both, nrow=2, padding=2, pad_value=1.0)
    atomic_write(path, lambda p: save_image(grid, p, format="png"))


def save_reconstruction(path: Path, recon: torch.Tensor, truth: torch.Tensor | None) -> None:
    """Truth above reconstruction when the truth is known, else the reconstruction alone."""
    if truth is not None:
        save_comparison(path, truth, recon)
        return
    images = recon.float().clamp(0, 1)
    scale = max(1, 96 // images.shape[-1])
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    grid = make_grid(images, nrow=images.shape[0], padding=2, pad_value=1.0)
    atomic_write(path, lambda p: save_image(grid, p, format="png"))
