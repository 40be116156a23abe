"""Pair reconstructions with ground-truth samples before scoring them.

A gradient inversion attack on a batch returns its images in no particular order, so each
reconstruction is scored against the ground-truth image it is closest to under a one-to-one
(optimal) assignment, as the GIA literature does (e.g. Geiping et al. 2020, Yin et al. 2021).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from gradleak.errors import GradleakError
from gradleak.metrics.image import check_image_pair

__all__ = ["COSTS", "match_reconstructions", "pairwise_mse", "reorder"]

COSTS: tuple[str, ...] = ("mse",)


def pairwise_mse(truth: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] x 2 -> [B, B]`` float64 with entry ``[i, j] = MSE(truth[i], recon[j])``."""
    check_image_pair(truth, recon, names=("truth", "recon"))
    t = truth.detach().to(device="cpu", dtype=torch.float64).flatten(1)
    r = recon.detach().to(device="cpu", dtype=torch.float64).flatten(1)
    # |t - r|^2 = |t|^2 + |r|^2 - 2 t.r avoids a [B, B, D] intermediate; clamp rounding below 0.
    sq = t.square().sum(1, keepdim=True) + r.square().sum(1)[None, :] - 2.0 * t @ r.T
    return sq.clamp_min(0.0) / t.shape[1]


def match_reconstructions(recon: torch.Tensor, truth: torch.Tensor, *, cost: str = "mse"
                          ) -> torch.Tensor:
    """Optimal one-to-one assignment of reconstructions to ground-truth samples.

    ``recon``, ``truth``: ``[B, C, H, W]``. Returns ``perm`` (LongTensor ``[B]``) where ``perm[i]``
    is the index of the reconstruction assigned to ground-truth sample ``i``, minimising the total
    per-sample MSE (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``); so
    ``recon[perm]`` lines up with ``truth``.
    """
    if cost not in COSTS:
        raise GradleakError(f"matching cost must be one of {', '.join(COSTS)}, got {cost!r}")
    matrix = pairwise_mse(truth, recon).numpy()
    if not np.isfinite(matrix).all():
        raise GradleakError("recon and truth must be finite to be matched (found NaN or inf)")
    rows, cols = linear_sum_assignment(matrix)
    perm = np.empty(len(rows), dtype=np.int64)
    perm[rows] = cols
    return torch.from_numpy(perm)


def reorder(recon: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``recon[perm]``: reconstructions in ground-truth order (``perm`` from
    :func:`match_reconstructions`)."""
    perm = torch.as_tensor(perm, dtype=torch.long)
    if perm.ndim != 1 or perm.numel() != recon.shape[0]:
        raise GradleakError(
            f"perm must be 1-D with {recon.shape[0]} entries, got shape {tuple(perm.shape)}"
        )
    if not torch.equal(perm.sort().values, torch.arange(recon.shape[0])):
        raise GradleakError(f"perm must be a permutation of 0..{recon.shape[0] - 1}")
    return recon[perm.to(recon.device)]
