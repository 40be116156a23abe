"""Update-free baselines: what an attacker gets WITHOUT the client's update.

A reconstruction only shows leakage from the update when it is closer to its victim than these
guesses, which need no update at all (issue "verdicts that claim no more than their evidence"):

* ``flat``: a flat image of the victim's own mean colour (three numbers per image; an oracle
  guess, so beating it is a low bar that PSNR alone can fail: a flat image scores 19.5 / 19.1 /
  27.1 dB on chelsea / rocket / hubble_deep_field at 32 px, above the paper's 18 dB);
* ``data_mean``: the mean image of the reference data;
* ``nearest_other``: the closest *other* sample of the reference data, per metric (highest PSNR,
  lowest LPIPS): what an attacker holding that data could pick with hindsight.

``identified``: the identification test. Among the victim and the reference samples
(distractors), the reconstruction's nearest neighbour (LPIPS, or MSE without LPIPS) is the victim.

The reference data is a pool of samples the attacker may know: other samples of the dataset,
never the victim's own (see :func:`reference_pool`). Shapes: ``truth``/``recon`` ``[B, C, H, W]``,
``reference`` ``[M, C, H, W]``, all in ``[0, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradleak.metrics.image import mse, psnr
from gradleak.metrics.lpips import lpips_distance

BASELINES = ("flat", "data_mean", "nearest_other")


@dataclass
class Baselines:
    """Per victim sample, the best PSNR and LPIPS any update-free baseline reaches.

    ``scores[name] = {"psnr": [B], "lpips": [B] | None}``; ``psnr``/``lpips``: the best over the
    baselines (max PSNR, min LPIPS) ``[B]``; ``pool``: the reference pool's size M (0: none)."""

    scores: dict[str, dict[str, list[float] | None]]
    psnr: torch.Tensor
    lpips: torch.Tensor | None
    pool: int

    def to_dict(self) -> dict[str, object]:
        return {"pool": self.pool, **self.scores}


def flat_images(truth: torch.Tensor) -> torch.Tensor:
    """Each image replaced by its own mean colour (per channel): ``[B, C, H, W]``."""
    return truth.mean(dim=(-2, -1), keepdim=True).expand_as(truth).contiguous()


def _pairwise(a: torch.Tensor, pool: torch.Tensor, metric: str, lpips_net: str) -> torch.Tensor | None:
    """``[B, M]`` distances (PSNR or LPIPS) between each of ``a`` and each pool sample."""
    b, m = a.shape[0], pool.shape[0]
    left = a.repeat_interleave(m, dim=0)
    right = pool.repeat(b, 1, 1, 1)
    if metric == "psnr":
        return psnr(left, right).view(b, m)
    out = lpips_distance(left, right, net=lpips_net)
    return None if out is None else out.view(b, m)


def _lists(t: torch.Tensor | None) -> list[float] | None:
    return None if t is None else [float(v) for v in t.tolist()]


def update_free_baselines(truth: torch.Tensor, reference: torch.Tensor | None, *,
                          lpips_net: str = "alex", with_lpips: bool = True) -> Baselines:
    """Score every baseline against ``truth``; without ``reference`` only ``flat`` is scored."""
    truth = truth.detach().cpu().float()
    candidates = {"flat": flat_images(truth)}
    if reference is not None and len(reference):
        reference = reference.detach().cpu().float()
        candidates["data_mean"] = reference.mean(dim=0, keepdim=True).expand_as(truth)
    scores: dict[str, dict[str, list[float] | None]] = {}
    best_p = torch.full((truth.shape[0],), -torch.inf, dtype=torch.float64)
    best_l: torch.Tensor | None = (torch.full((truth.shape[0],), torch.inf, dtype=torch.float64)
                                   if with_lpips else None)
    for name, guess in candidates.items():
        p = psnr(guess, truth).double()
        lp = lpips_distance(guess, truth, net=lpips_net) if with_lpips else None
        scores[name] = {"psnr": _lists(p), "lpips": _lists(lp)}
        best_p = torch.maximum(best_p, p)
        best_l = None if lp is None or best_l is None else torch.minimum(best_l, lp)
    if "data_mean" in candidates:
        p = _pairwise(truth, reference, "psnr", lpips_net).double().max(dim=1).values
        lp = _pairwise(truth, reference, "lpips", lpips_net) if with_lpips else None
        lp = None if lp is None else lp.min(dim=1).values
        scores["nearest_other"] = {"psnr": _lists(p), "lpips": _lists(lp)}
        best_p = torch.maximum(best_p, p)
        best_l = None if lp is None or best_l is None else torch.minimum(best_l, lp)
    pool = 0 if reference is None else int(len(reference))
    return Baselines(scores=scores, psnr=best_p, lpips=best_l, pool=pool)


def identified(recon: torch.Tensor, truth: torch.Tensor, reference: torch.Tensor | None, *,
               lpips_net: str = "alex", with_lpips: bool = True) -> torch.Tensor | None:
    """Per sample, whether the reconstruction is nearer to its victim than to every distractor
    of ``reference`` (LPIPS when available, else MSE): BoolTensor ``[B]``; None without a pool.
    ``recon`` is matched to ``truth`` already (row i reconstructs victim i)."""
    if reference is None or not len(reference):
        return None
    recon, truth, reference = (t.detach().cpu().float() for t in (recon, truth, reference))
    to_victim = lpips_distance(recon, truth, net=lpips_net) if with_lpips else None
    to_pool = _pairwise(recon, reference, "lpips", lpips_net) if to_victim is not None else None
    if to_victim is None or to_pool is None:
        to_victim = mse(recon, truth).double()
        b, m = recon.shape[0], reference.shape[0]
        to_pool = mse(recon.repeat_interleave(m, dim=0), reference.repeat(b, 1, 1, 1)
                      ).double().view(b, m)
    return to_victim < to_pool.min(dim=1).values


def reference_pool(dataset: object, exclude: list[int], labels_excluded: list[int], *,
                   size: int, seed: int) -> torch.Tensor | None:
    """Up to ``size`` samples of ``dataset`` the attacker may know: never an index in
    ``exclude`` (the victim's), nor a sample of a class in ``labels_excluded`` (used for data
    sets whose class IS the victim's private source, e.g. one photo and its crops). Drawn
    uniformly without replacement with ``torch.Generator().manual_seed(seed)``."""
    if size <= 0:
        return None
    banned = set(exclude)
    total = len(dataset)  # type: ignore[arg-type]
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).tolist()
    if labels_excluded:
        targets = dataset.targets()  # type: ignore[attr-defined]
        banned_labels = set(labels_excluded)
        order = [i for i in order if targets[i] not in banned_labels]
    chosen = [i for i in order if i not in banned][:size]
    if not chosen:
        return None
    images, _ = dataset.tensors(chosen)  # type: ignore[attr-defined]
    return images
