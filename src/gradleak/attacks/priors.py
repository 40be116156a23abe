"""Image priors (the paper's level-1 knowledge), each a differentiable scalar of ``x [B, C, H, W]``."""

from __future__ import annotations

import torch


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV as mean absolute neighbour differences (Geiping et al. 2020)."""
    dx = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean()
    dy = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean()
    return dx + dy
