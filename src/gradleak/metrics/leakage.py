"""Sample-level leakage rates BRR and WSRR (SoK on gradient leakage, App. C "metric selection").

The paper calls a reconstructed sample *leaked* when it passes two similarity thresholds at once,
``tau_PSNR = 18`` and ``tau_LPIPS = 0.1``; we read that as ``PSNR >= 18 dB and LPIPS <= 0.1``
(higher PSNR and lower LPIPS mean a closer reconstruction). gradleak's one leak criterion
(:func:`leaked`, used by the scores, BRR/WSRR, the audit, the Flower guard and audit strategy)
also asks that the reconstruction needed the update: it must beat every update-free baseline of
:mod:`gradleak.metrics.baselines` in both metrics and, when a reference pool exists, pass the
identification test. On that indicator the paper defines

* BRR, Batch Reconstruction Rate: the proportion of a batch's samples that leak;
* WSRR, Worst-Sample Reconstruction Rate: "the likelihood of reconstructing the most vulnerable
  sample", estimated over 10 independent attack initialisations. We read it literally: for each
  ground-truth sample b, the fraction of initialisations in which b leaks; WSRR is the maximum of
  that over b. Sample identity is fixed because every initialisation is matched to the ground
  truth first. (The looser reading "fraction of initialisations in which *some* sample leaks" is
  >= ours; the two agree when the same sample is always the one that leaks.)

All rates take per-sample metrics that were computed after matching reconstructions to the ground
truth. If LPIPS is unavailable (``None``) they return ``None``: the caller reports why.
"""

from __future__ import annotations

import math

import torch

from gradleak.config import DEFAULT_LPIPS_THRESHOLD, DEFAULT_PSNR_THRESHOLD
from gradleak.errors import GradleakError

__all__ = [
    "DEFAULT_LPIPS_THRESHOLD",
    "DEFAULT_PSNR_THRESHOLD",
    "batch_reconstruction_rate",
    "leaked",
    "worst_sample_reconstruction_rate",
]


def _check_threshold(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise GradleakError(f"{name} must be a number, got {value!r}")


def leaked(psnr: torch.Tensor, lpips: torch.Tensor | None, *,
           psnr_threshold: float = DEFAULT_PSNR_THRESHOLD,
           lpips_threshold: float = DEFAULT_LPIPS_THRESHOLD,
           baseline_psnr: torch.Tensor | None = None, baseline_lpips: torch.Tensor | None = None,
           identified: torch.Tensor | None = None) -> torch.Tensor | None:
    """Per-sample leak indicator: ``PSNR >= psnr_threshold and LPIPS <= lpips_threshold`` (the
    paper's), and, when given, ``PSNR > baseline_psnr and LPIPS < baseline_lpips`` (strictly
    better than the best update-free baseline, ``[B]``) and ``identified`` (``[B]`` or like
    ``psnr``).

    ``psnr`` and ``lpips`` have the same shape (``[B]`` or ``[I, B]``); returns a BoolTensor of that
    shape, or ``None`` when ``lpips`` is ``None``. NaN metrics never count as leaked.
    """
    _check_threshold(psnr_threshold, "psnr_threshold")
    _check_threshold(lpips_threshold, "lpips_threshold")
    psnr = torch.as_tensor(psnr)
    if psnr.ndim not in (1, 2) or psnr.numel() == 0:
        raise GradleakError(f"psnr must be non-empty [B] or [I, B], got shape {tuple(psnr.shape)}")
    if lpips is None:
        return None
    lpips = torch.as_tensor(lpips)
    if psnr.shape != lpips.shape:
        raise GradleakError(
            f"psnr and lpips must have the same shape, got {tuple(psnr.shape)} and "
            f"{tuple(lpips.shape)}"
        )
    flags = (psnr >= psnr_threshold) & (lpips <= lpips_threshold)
    if baseline_psnr is not None:
        flags &= psnr > torch.as_tensor(baseline_psnr, dtype=psnr.dtype)
    if baseline_lpips is not None:
        flags &= lpips < torch.as_tensor(baseline_lpips, dtype=lpips.dtype)
    if identified is not None:
        flags &= torch.as_tensor(identified, dtype=torch.bool)
    return flags


def batch_reconstruction_rate(psnr: torch.Tensor, lpips: torch.Tensor | None, *,
                              psnr_threshold: float = DEFAULT_PSNR_THRESHOLD,
                              lpips_threshold: float = DEFAULT_LPIPS_THRESHOLD,
                              **baselines: torch.Tensor | None) -> float | None:
    """BRR: fraction of the batch's samples that leak (see :func:`leaked`), in ``[0, 1]``.

    ``[B]`` metrics give the rate of one attack run; ``[I, B]`` metrics (I attack initialisations)
    give the rate averaged over initialisations. ``None`` if ``lpips`` is ``None``. ``baselines``:
    the keyword arguments ``baseline_psnr``/``baseline_lpips``/``identified`` of :func:`leaked`.
    """
    flags = leaked(psnr, lpips, psnr_threshold=psnr_threshold, lpips_threshold=lpips_threshold,
                   **baselines)
    if flags is None:
        return None
    # Every initialisation has the same B, so the mean over all entries is the mean over
    # initialisations of the per-batch rate.
    return float(flags.double().mean())


def worst_sample_reconstruction_rate(psnr: torch.Tensor, lpips: torch.Tensor | None, *,
                                     psnr_threshold: float = DEFAULT_PSNR_THRESHOLD,
                                     lpips_threshold: float = DEFAULT_LPIPS_THRESHOLD,
                                     **baselines: torch.Tensor | None) -> float | None:
    """WSRR: the highest per-sample leak frequency over attack initialisations.

    ``psnr``, ``lpips``: ``[I, B]`` (I independent initialisations of the attack on the same batch;
    the paper uses I = 10). A ``[B]`` input is one initialisation, so the result is 0 or 1.
    ``None`` if ``lpips`` is ``None``. ``baselines``: as for :func:`batch_reconstruction_rate`.
    """
    flags = leaked(psnr, lpips, psnr_threshold=psnr_threshold, lpips_threshold=lpips_threshold,
                   **baselines)
    if flags is None:
        return None
    if flags.ndim == 1:
        flags = flags[None, :]
    return float(flags.double().mean(dim=0).max())
