"""Metrics for gradient-inversion reconstructions: image similarity, matching, leakage rates.

The functional metrics (:func:`mse`, :func:`psnr`, :func:`ssim`, :func:`lpips_distance`) take
``[B, C, H, W]`` batches in ``[0, 1]`` and return per-sample ``[B]`` tensors; :func:`score`
combines them the way the SoK paper evaluates an attack: match reconstructions to the ground
truth, average the per-sample metrics, and compute BRR/WSRR (App. C).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from gradleak.errors import GradleakError
from gradleak.metrics.baselines import identified, update_free_baselines
from gradleak.metrics.image import MetricInfo, check_image_pair, mse, psnr, ssim
from gradleak.metrics.labels import label_accuracy
from gradleak.metrics.leakage import (
    DEFAULT_LPIPS_THRESHOLD,
    DEFAULT_PSNR_THRESHOLD,
    batch_reconstruction_rate,
    leaked,
    worst_sample_reconstruction_rate,
)
from gradleak.metrics.lpips import INSTALL_HINT, NETS, lpips_distance
from gradleak.metrics.matching import match_reconstructions, reorder

__all__ = [
    "METRICS",
    "PSNR_REPORT_CAP",
    "MetricInfo",
    "batch_reconstruction_rate",
    "label_accuracy",
    "leaked",
    "lpips_distance",
    "match_reconstructions",
    "mse",
    "psnr",
    "reorder",
    "score",
    "ssim",
    "worst_sample_reconstruction_rate",
]

METRICS: dict[str, MetricInfo] = {
    "mse": MetricInfo("mse", higher_is_better=False, range=(0.0, 1.0)),
    "psnr": MetricInfo("psnr", higher_is_better=True, range=(0.0, math.inf),
                       threshold=DEFAULT_PSNR_THRESHOLD, threshold_key="metrics.psnr_threshold"),
    "ssim": MetricInfo("ssim", higher_is_better=True, range=(-1.0, 1.0)),
    "lpips": MetricInfo("lpips", higher_is_better=False, range=(0.0, math.inf),
                        threshold=DEFAULT_LPIPS_THRESHOLD, threshold_key="metrics.lpips_threshold"),
    "brr": MetricInfo("brr", higher_is_better=True, range=(0.0, 1.0)),
    "wsrr": MetricInfo("wsrr", higher_is_better=True, range=(0.0, 1.0)),
    "label_accuracy": MetricInfo("label_accuracy", higher_is_better=True, range=(0.0, 1.0)),
}
"""What each metric means. ``higher_is_better`` is always from the attack's point of view: the
direction of a closer reconstruction, more leaked samples or more recovered labels (a defense
wants the opposite)."""



def defends(lpips: float | None, drop: float | None = None, *, lpips_threshold: float | None = None,
            max_drop: float | None = None) -> bool | None:
    """Whether a defense setting defends: its LPIPS on the non-leaking side of the threshold
    (default: the paper's) and, with ``max_drop``, its accuracy drop (points) within that budget.
    Point values or the matching interval ends (LPIPS's lower, the drop's upper bound); None
    when a needed value is missing. The one rule the privacy-utility table, the experiments'
    trade-off verdict and the audit's recommendation share."""
    if lpips is None or (max_drop is not None and drop is None):
        return None
    return (not METRICS["lpips"].passes(lpips, lpips_threshold)
            and within_budget(drop, max_drop))


def within_budget(drop: float | None, max_drop: float | None) -> bool:
    """Whether an accuracy drop (points) stays within ``max_drop`` (no budget: always; an
    unknown drop never)."""
    if max_drop is None:
        return True
    return drop is not None and drop <= max_drop


PSNR_REPORT_CAP = 100.0
"""Per-sample PSNR is clamped to this many dB in :func:`score` (and so in its mean): an exact
reconstruction has infinite PSNR, which JSON cannot hold and which would make any mean infinite.
100 dB is an MSE of 1e-10, far beyond any visible difference; the leakage thresholds are applied
to the unclamped values."""


def _floats(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.tolist()]


def _initialisations(recon: torch.Tensor, truth: torch.Tensor, lpips_net: str) -> torch.Tensor:
    """``recon`` as ``[I, B, C, H, W]``, checked against ``truth`` (one-line errors)."""
    if not isinstance(recon, torch.Tensor) or recon.ndim not in (4, 5):
        shape = tuple(recon.shape) if isinstance(recon, torch.Tensor) else type(recon).__name__
        raise GradleakError(f"recon must be [I, B, C, H, W] or [B, C, H, W], got {shape}")
    if lpips_net not in NETS:
        raise GradleakError(f"lpips_net must be one of {', '.join(NETS)}, got {lpips_net!r}")
    recon_all = recon if recon.ndim == 5 else recon[None]
    if recon_all.shape[0] == 0:
        raise GradleakError("recon must hold at least one initialisation, got I = 0")
    check_image_pair(recon_all[0], truth, names=("recon", "truth"))
    if not torch.isfinite(recon_all).all():
        raise GradleakError("recon contains NaN or inf; the attack diverged")
    return recon_all


def _criterion(matched: list[torch.Tensor], truth: torch.Tensor, psnr_all: torch.Tensor,
               lpips_all: torch.Tensor | None, reference: torch.Tensor | None, lpips_net: str,
               thresholds: dict[str, float]) -> dict[str, Any]:
    """The leak criterion on matched reconstructions ``I x [B, ...]``: baselines, identification,
    the paper's flags and the criterion's flags of initialisation 0, BRR and WSRR."""
    with_lpips = lpips_all is not None
    lpips0 = None if lpips_all is None else lpips_all[0]
    base = update_free_baselines(truth, reference, lpips_net=lpips_net, with_lpips=with_lpips)
    ids = [identified(m, truth, reference, lpips_net=lpips_net, with_lpips=with_lpips)
           for m in matched]
    ids_all = None if ids[0] is None else torch.stack(ids)
    criterion = {"baseline_psnr": base.psnr, "baseline_lpips": base.lpips,
                 "identified": None if ids_all is None else ids_all[0]}
    return {
        "paper": leaked(psnr_all[0], lpips0, **thresholds),
        "leaked": leaked(psnr_all[0], lpips0, **thresholds, **criterion),
        "baselines": base, "ids": ids,
        "brr": batch_reconstruction_rate(psnr_all[0], lpips0, **thresholds, **criterion),
        "wsrr": worst_sample_reconstruction_rate(psnr_all, lpips_all, **thresholds,
                                                 **(criterion | {"identified": ids_all})),
    }


def score(recon: torch.Tensor, truth: torch.Tensor, *, lpips_net: str = "alex",
          psnr_threshold: float = DEFAULT_PSNR_THRESHOLD,
          lpips_threshold: float = DEFAULT_LPIPS_THRESHOLD,
          reference: torch.Tensor | None = None) -> dict[str, Any]:
    """Score an attack's reconstructions of one batch, ready for ``result.json``.

    ``recon``: ``[I, B, C, H, W]`` (I attack initialisations, the chosen best one FIRST) or
    ``[B, C, H, W]`` (I = 1); ``truth``: ``[B, C, H, W]``; both in ``[0, 1]``. Each initialisation
    is matched to the truth by optimal assignment on per-sample MSE. The batch means
    ``mse, psnr, ssim, lpips``, the ``per_sample`` lists, ``brr`` and ``matching`` (for each truth
    index, the index of its reconstruction) describe initialisation 0; ``wsrr`` uses all I
    (SoK paper App. C, I = 10 there). PSNR is clamped at :data:`PSNR_REPORT_CAP` for reporting.
    ``lpips``/``brr``/``wsrr`` are ``None`` when LPIPS weights are not installed; ``warnings``
    says why anything is ``None`` (or less meaningful).

    ``reference`` ``[M, C, H, W]``: samples the attacker may know (never the victim's) for the
    leak criterion's baselines and identification test (:func:`~gradleak.metrics.leakage.leaked`;
    without it: the flat baseline only), which decides ``per_sample.leaked``, BRR and WSRR.
    """
    recon_all = _initialisations(recon, truth, lpips_net)
    inits = recon_all.shape[0]

    matched, perms = [], []
    for i in range(inits):
        perm = match_reconstructions(recon_all[i], truth)
        perms.append(perm)
        matched.append(reorder(recon_all[i], perm))
    flat = torch.cat(matched)  # [I * B, C, H, W]: one LPIPS pass over every initialisation
    truth_rep = truth.repeat(inits, 1, 1, 1)

    batch = truth.shape[0]
    psnr_all = psnr(flat, truth_rep).view(inits, batch)
    lpips_flat = lpips_distance(flat, truth_rep, net=lpips_net)
    lpips_all = None if lpips_flat is None else lpips_flat.view(inits, batch)
    mse0 = mse(matched[0], truth)
    ssim0 = ssim(matched[0], truth)
    psnr0 = psnr_all[0].clamp(max=PSNR_REPORT_CAP)
    lpips0 = None if lpips_all is None else lpips_all[0]

    thresholds = {"psnr_threshold": psnr_threshold, "lpips_threshold": lpips_threshold}
    leak = _criterion(matched, truth, psnr_all, lpips_all, reference, lpips_net, thresholds)
    paper0, leaked0, ids, brr = leak["paper"], leak["leaked"], leak["ids"], leak["brr"]

    notes = []
    if lpips_all is None:
        notes.append(
            f"lpips, brr and wsrr are null: LPIPS-{lpips_net} backbone weights are not installed "
            f"(BRR/WSRR need LPIPS); {INSTALL_HINT}"
        )
    if reference is None or not len(reference):
        notes.append("no reference data: the leak criterion's baselines are the flat mean-colour "
                     "image only (no data-mean, nearest-other or identification test)")
    if inits == 1 and leak["wsrr"] is not None:
        notes.append(
            "wsrr is computed over 1 attack initialisation (the paper uses 10), so it is 0 or 1"
        )

    return {
        "mse": float(mse0.mean()),
        "psnr": float(psnr0.mean()),
        "ssim": float(ssim0.mean()),
        "lpips": None if lpips0 is None else float(lpips0.mean()),
        "brr": brr,
        "wsrr": leak["wsrr"],
        "per_sample": {
            "mse": _floats(mse0),
            "psnr": _floats(psnr0),
            "ssim": _floats(ssim0),
            "lpips": None if lpips0 is None else _floats(lpips0),
            "leaked": None if leaked0 is None else [bool(v) for v in leaked0.tolist()],
            "passes_thresholds": None if paper0 is None else [bool(v) for v in paper0.tolist()],
            "identified": None if ids[0] is None else [bool(v) for v in ids[0].tolist()],
        },
        "baselines": leak["baselines"].to_dict(),
        "thresholds": {"psnr": float(psnr_threshold), "lpips": float(lpips_threshold)},
        "wsrr_initializations": inits,
        "lpips_net": lpips_net,
        "matching": [int(v) for v in perms[0].tolist()],
        "warnings": notes,
    }
