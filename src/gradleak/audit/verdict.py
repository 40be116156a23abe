"""The audit's verdict rule: from finished runs to ``leaks`` / ``does not leak`` / ``inconclusive``.

Pure functions over plain data (a store row's per-sample metrics and loss history), so the rule
can be tested on exact cases and documented once (``docs/audit.md``).

**Samples.** A reconstructed sample is *at risk* when it passes EITHER leakage threshold (LPIPS
<= 0.1 or PSNR >= 18 dB) and *leaked* when it passes BOTH (the paper's App. C reading). The
thresholds are those stored with each run (``metrics.psnr_threshold``, ``metrics.lpips_threshold``)
and the direction comes from :data:`gradleak.metrics.METRICS`.

**Level.** Over all trials of a level (``n`` = seeds x samples, each seed attacking its own
victim samples), with ``k`` samples at risk and the Wilson score interval ``[lo, hi]`` of the
at-risk share at ``confidence`` (default 95 %):

1. ``leaks`` when ``lo >= min_share`` (default 0.2): even the pessimistic end of the interval
   has a fifth of the samples at risk, so one lucky seed cannot produce this verdict (with three
   seeds of one sample, one at-risk seed gives ``lo`` = 0.06).
2. ``does not leak`` when no trial is at risk (``k = 0``), there are at least ``min_trials``
   trials and every run converged.
3. ``inconclusive`` otherwise, with the reason and the budget that would decide it: a run whose
   attack had not converged (its gradient loss still fell by more than ``converged_gain``
   relative over its last fifth of iterations) -> ``attack.iterations`` doubled; too few trials
   or seeds that disagree -> the number of seeds for which the observed share's interval would
   clear ``min_share``.

A run whose LPIPS could not be computed counts a sample as at risk only when its PSNR passes;
the leaked share is then null (with a warning) and ``does not leak`` is not claimed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from gradleak.metrics import METRICS

LEAKS, SAFE, INCONCLUSIVE = "leaks", "does not leak", "inconclusive"
MAX_SEEDS = 50  # beyond this a suggestion stops being a budget anyone runs


@dataclass(frozen=True)
class VerdictRule:
    """The rule's parameters (``verdict:`` in ``configs/audit_ladder.yaml``)."""

    min_share: float = 0.2
    confidence: float = 0.95
    min_trials: int = 3
    converged_gain: float = 0.05

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> VerdictRule:
        return cls(**(data or {}))


@dataclass
class RunEvidence:
    """What the verdict reads of one finished run (one seed of one level)."""

    seed: int
    psnr: list[float]
    lpips: list[float] | None
    thresholds: dict[str, float]
    iterations: int = 0
    iterations_used: list[int] = field(default_factory=list)
    history: list[float] = field(default_factory=list)
    run_id: str = ""
    plateau_stop: bool = False  # attack.stop without attack.max_seconds: an early end is a plateau

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RunEvidence:
        """From a store row of kind ``attack`` (its ``result`` JSON parsed)."""
        res = row.get("result") or {}
        per = res.get("per_sample") or {}
        return cls(seed=int(row["seed"]), psnr=list(per.get("psnr") or []),
                   lpips=per.get("lpips"), thresholds=res.get("thresholds") or {},
                   iterations=int(row.get("iterations") or 0),
                   iterations_used=list(res.get("iterations_used") or []),
                   history=list(res.get("loss_history") or []), run_id=str(row.get("run_id", "")),
                   plateau_stop=bool(row.get("attack.stop")) and row.get("attack.max_seconds") is None)

    def flags(self) -> list[tuple[bool, bool | None]]:
        """Per sample ``(at_risk, leaked)``; ``leaked`` is None without LPIPS."""
        psnr_t = self.thresholds.get("psnr", METRICS["psnr"].threshold)
        lpips_t = self.thresholds.get("lpips", METRICS["lpips"].threshold)
        out = []
        for i, p in enumerate(self.psnr):
            by_psnr = METRICS["psnr"].passes(p, psnr_t)
            if self.lpips is None:
                out.append((by_psnr, None))
                continue
            by_lpips = METRICS["lpips"].passes(self.lpips[i], lpips_t)
            out.append((by_psnr or by_lpips, by_psnr and by_lpips))
        return out


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial share ``k / n`` (``(0, 1)`` when ``n = 0``)."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def converged(run: RunEvidence, gain: float) -> bool:
    """Whether the attack had stopped improving: no loss history (a closed-form attack), a
    restart ended early by its plateau rule (``attack.stop`` alone; an end by ``attack.max_seconds``
    is a spent budget, judged by the loss like a full run), or the best restart's loss fell by at
    most ``gain`` (relative) over its last fifth of recorded iterations. The history holds every
    10th iteration of each restart, restarts one after another."""
    if not run.history:
        return True
    ended_early = bool(run.iterations_used) and min(run.iterations_used) < run.iterations
    if run.plateau_stop and ended_early:
        return True
    chunks = _per_restart(run.history, run.iterations_used)
    best = min(chunks, key=lambda c: min(c))
    tail = max(1, len(best) // 5)
    before, after = min(best[:-tail] or best), min(best[-tail:])
    return before - after <= gain * max(abs(before), 1e-12)


def _per_restart(history: list[float], used: list[int]) -> list[list[float]]:
    """Split the history by restart: a restart of ``u`` iterations recorded iterations
    ``0, 10, 20, ...`` and its last one; the whole history when the lengths do not add up."""
    sizes = [len([i for i in range(u) if i % 10 == 0 or i == u - 1]) for u in used]
    if not used or sum(sizes) != len(history) or min(sizes) < 5:
        return [history]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [history[a:a + n] for a, n in zip(starts, sizes, strict=True)]


def seeds_for(share: float, samples: int, rule: VerdictRule) -> int | None:
    """Seeds at which a level with this at-risk ``share`` (``samples`` per seed) would be
    decided: the interval's lower bound clears ``min_share``, or for share 0 enough trials; None
    when no number up to :data:`MAX_SEEDS` would (a share at or below the floor)."""
    for seeds in range(1, MAX_SEEDS + 1):
        n = seeds * max(1, samples)
        lo, _ = wilson(round(share * n), n, rule.confidence)
        if (share > rule.min_share and lo >= rule.min_share) or (share == 0 and n >= rule.min_trials):
            return seeds
    return None


def level_verdict(runs: list[RunEvidence], rule: VerdictRule) -> dict[str, Any]:
    """The verdict of one ladder level over its runs (see the module docstring)."""
    flags = [f for r in runs for f in r.flags()]
    n, k = len(flags), sum(1 for at_risk, _ in flags if at_risk)
    lo, hi = wilson(k, n, rule.confidence)
    no_lpips = any(r.lpips is None for r in runs)
    leaked = None if no_lpips or not n else sum(1 for _, lk in flags if lk) / n
    out: dict[str, Any] = {"seeds": len(runs), "samples": n, "at_risk": k,
                           "at_risk_share": k / n if n else None, "leaked_share": leaked,
                           "interval": [lo, hi], "converged": None, "suggest": None}
    if not runs or not n:
        return out | {"verdict": INCONCLUSIVE, "reason": "no finished run"}
    stuck = [r for r in runs if not converged(r, rule.converged_gain)]
    out["converged"] = not stuck
    seeds_per = {r.seed: sum(1 for a, _ in r.flags() if a) for r in runs}
    agree = len({v > 0 for v in seeds_per.values()}) == 1
    per_seed = max(1, n // len(runs))
    if lo >= rule.min_share:
        reason = (f"{k} of {n} samples at risk; the {rule.confidence:.0%} interval "
                  f"[{lo:.2f}, {hi:.2f}] lies above the {rule.min_share:.0%} floor")
        return out | {"verdict": LEAKS, "reason": reason}
    if k == 0 and not stuck and n >= rule.min_trials and not no_lpips:
        return out | {"verdict": SAFE, "reason": f"no sample at risk in {n} (at most {hi:.0%} at "
                                                 f"{rule.confidence:.0%} confidence)"}
    reasons, suggest = [], []
    if stuck:
        iters = max(r.iterations for r in runs) or 0
        reasons.append(f"the attack was still improving in {len(stuck)} of {len(runs)} runs")
        suggest.append(f"attack.iterations={2 * iters}" if iters else "more attack iterations")
    if no_lpips and k == 0:
        reasons.append("LPIPS could not be computed, so a PSNR-only miss is not a safe result")
    if k and not agree:
        reasons.append(f"seeds disagree ({sum(v > 0 for v in seeds_per.values())} of "
                       f"{len(runs)} seeds have samples at risk)")
    if k or n < rule.min_trials:
        reasons.append(f"{k} of {n} samples at risk, interval [{lo:.2f}, {hi:.2f}] straddles the "
                       f"{rule.min_share:.0%} floor" if k else f"only {n} trial{'s' if n != 1 else ''}")
        seeds = seeds_for(k / n, per_seed, rule)
        restarts = 2 * max(1, max(len(r.iterations_used) for r in runs))
        suggest.append(f"--seeds {seeds}" if seeds else f"attack.restarts={restarts} (isolated "
                       "samples at risk: inspect them)")
    out["suggest"] = f"rerun with {' '.join(suggest)}" if suggest else None
    return out | {"verdict": INCONCLUSIVE, "reason": "; ".join(reasons) or "undecided"}


def combine(verdicts: list[str]) -> str:
    """Several levels' verdicts as one: any ``leaks`` leaks; all ``does not leak`` is safe."""
    if LEAKS in verdicts:
        return LEAKS
    if verdicts and all(v == SAFE for v in verdicts):
        return SAFE
    return INCONCLUSIVE


def best_sample(runs: list[RunEvidence]) -> dict[str, Any] | None:
    """The closest reconstruction of a level: lowest LPIPS (highest PSNR without LPIPS)."""
    found = None
    for r in runs:
        for i, p in enumerate(r.psnr):
            lp = None if r.lpips is None else r.lpips[i]
            key = (lp if lp is not None else math.inf, -p)
            if found is None or key < found[0]:
                found = (key, {"run_id": r.run_id, "seed": r.seed, "sample": i, "psnr": p,
                               "lpips": lp})
    return None if found is None else found[1]
