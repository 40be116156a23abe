"""The audit's verdict rule: from finished runs to ``leaks`` / ``does not leak`` / ``inconclusive``.

Pure functions over plain data (a store row's per-sample metrics and loss history), so the rule
can be tested on exact cases and documented once (``docs/audit.md``).

**Samples.** A reconstructed sample is *leaked* by gradleak's one leak criterion
(:func:`gradleak.metrics.leakage.leaked`, stored per sample as ``per_sample.leaked``): it passes
BOTH paper thresholds (PSNR >= 18 dB and LPIPS <= 0.1), beats every update-free baseline (the
flat mean-colour image, the data's mean image, the nearest other sample) and is identified among
distractors. *At risk* (either threshold) is kept as description only.

**Runs are the trials.** A run is one victim draw, one client round and one attack; a level's
runs never share a victim (the audit draws victims without replacement). A run *leaks* when any
of its samples leaked; the level's statistic is the share of leaking runs, ``k`` of ``n``.

**Level.** With the sequential design of :mod:`gradleak.audit.sequential` (exact one-sided
Clopper-Pearson bounds at a per-look level calibrated so that both overall error rates are at
most ``1 - confidence`` at the floor ``min_share``):

1. ``leaks`` when the lower bound of the run leak rate is at least ``min_share`` (3 of 3 runs);
2. ``does not leak`` when its upper bound is below ``min_share`` (0 of 15 runs at the defaults),
   every run converged and every run could be scored with LPIPS;
3. ``inconclusive`` otherwise, with the reason, the bound ("no leak in n runs, at most X %") and
   the runs that would decide it. The audit runs further rounds while a level is undecided, up to
   ``--max-seeds`` runs.

**Convergence.** A run converged when its best restart's loss stopped falling: the running best
fell by at most ``converged_gain`` (relative) or by at most 1e-3 of the starting loss (a loss
already at the floor) over the judged window. Without a schedule the window is the last fifth
of the run. With the step schedule (``attack.lr_decay``: x0.1 at 3/8, 5/8, 7/8) every decay
flattens the loss whether or not more iterations would help, so the window is the second half
of the base-rate phase before the first decay: a run still improving there was cut short, and
doubling ``attack.iterations`` lengthens exactly that phase. A plateau stop (``attack.stop``
without ``attack.max_seconds``) counts as converged.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from gradleak.audit.sequential import Design, lower_bound, upper_bound
from gradleak.metrics import METRICS

LEAKS, SAFE, INCONCLUSIVE = "leaks", "does not leak", "inconclusive"
MAX_SEEDS = 50  # beyond this a suggestion stops being a budget anyone runs
FIRST_DECAY = 3 / 8  # the step schedule's first x0.1 (attack_settings: 3/8, 5/8, 7/8)
FLOOR_GAIN = 1e-3  # a fall below this share of the starting loss is noise at the floor


@dataclass(frozen=True)
class VerdictRule:
    """The rule's parameters (``verdict:`` in ``configs/audit_ladder.yaml``): the floor of the
    run leak rate, the overall confidence, the fewest runs before any decision, the convergence
    gain, and the sequential design's round size and cap (``--seeds``, ``--max-seeds``)."""

    min_share: float = 0.2
    confidence: float = 0.95
    min_trials: int = 3
    converged_gain: float = 0.05
    round_size: int = 3
    max_runs: int = 15

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> VerdictRule:
        return cls(**(data or {}))

    @property
    def design(self) -> Design:
        return Design(floor=self.min_share, confidence=self.confidence,
                      round_size=self.round_size, max_runs=max(self.max_runs, self.round_size))


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
    raced: bool = False  # attack.race: a restart that ended early was eliminated, not settled
    leaked: list[bool] | None = None  # per sample, the leak criterion (None: not decidable)
    lr_decay: bool = False  # the step schedule: judge convergence before its last decay
    victims: list[int] = field(default_factory=list)
    parts: list[RunEvidence] = field(default_factory=list)  # merged runs (:func:`merge`)
    # text runs: per sentence ROUGE-1 and semantic similarity (psnr/lpips stay empty)
    rouge1: list[float | None] | None = None
    semantic: list[float | None] | None = None
    texts: dict[str, list[str]] = field(default_factory=dict)  # original / reconstruction

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RunEvidence:
        """From a store row of kind ``attack`` (its ``result`` JSON parsed)."""
        res = row.get("result") or {}
        per = res.get("per_sample") or {}
        victims = ((res.get("scenario") or {}).get("victim_indices")
                   or _as_list(row.get("data.indices")))
        text = "rouge1" in per and "psnr" not in per
        return cls(seed=int(row["seed"]), psnr=list(per.get("psnr") or []),
                   rouge1=list(per["rouge1"]) if text else None,
                   semantic=per.get("semantic") if text else None,
                   texts={k: list(per.get(k) or []) for k in ("original", "reconstruction")}
                   if text else {},
                   lpips=per.get("lpips"), thresholds=res.get("thresholds") or {},
                   iterations=int(row.get("iterations") or 0),
                   iterations_used=list(res.get("iterations_used") or []),
                   history=list(res.get("loss_history") or []), run_id=str(row.get("run_id", "")),
                   plateau_stop=bool(row.get("attack.stop")) and row.get("attack.max_seconds") is None,
                   raced=bool(row.get("attack.race")),
                   leaked=per.get("leaked"), lr_decay=bool(row.get("attack.lr_decay")),
                   victims=[int(v) for v in victims or []])

    def flags(self) -> list[tuple[bool, bool | None]]:
        """Per sample ``(at_risk, leaked)``: at risk passes either threshold (description);
        leaked is the stored criterion, None when it could not be decided (no LPIPS; for text,
        no semantic score or reference pool)."""
        if self.rouge1 is not None:
            return self._text_flags()
        psnr_t = self.thresholds.get("psnr", METRICS["psnr"].threshold)
        lpips_t = self.thresholds.get("lpips", METRICS["lpips"].threshold)
        out = []
        for i, p in enumerate(self.psnr):
            by_psnr = METRICS["psnr"].passes(p, psnr_t)
            by_lpips = self.lpips is not None and METRICS["lpips"].passes(self.lpips[i], lpips_t)
            lk = None if self.leaked is None or self.lpips is None else bool(self.leaked[i])
            out.append((by_psnr or by_lpips, lk))
        return out

    def _text_flags(self) -> list[tuple[bool, bool | None]]:
        from gradleak.metrics.text import TEXT_METRICS

        rt = self.thresholds.get("rouge1", TEXT_METRICS["rouge1"].threshold)
        st = self.thresholds.get("semantic", TEXT_METRICS["semantic"].threshold)
        out = []
        for i, r in enumerate(self.rouge1 or []):
            s = self.semantic[i] if self.semantic else None
            at_risk = (r is not None and r >= rt) or (s is not None and s >= st)
            lk = None if self.leaked is None or self.leaked[i] is None else bool(self.leaked[i])
            out.append((at_risk, lk))
        return out

    @property
    def run_leaked(self) -> bool | None:
        """Whether any sample of the run leaked (None: undecidable, e.g. LPIPS missing)."""
        flags = [lk for _, lk in self.flags()]
        if any(flags):
            return True
        return None if not flags or None in flags else False


def evidence(specs: list[Any], rows: dict[str, dict[str, Any]]) -> list[RunEvidence]:
    """The evidence of the finished runs among ``specs`` (run specs with a ``run_id``), from
    their stored ``rows`` by run id; failed runs have no row and no evidence."""
    return [RunEvidence.from_row(rows[s.run_id]) for s in specs if s.run_id in rows]


def merge(runs: list[RunEvidence | None]) -> RunEvidence:
    """Several attacks on ONE trial as one piece of evidence: per sample the best PSNR and
    LPIPS, leaked when any attack leaked it (undecidable when an attack is missing or could not
    decide and none leaked); converged when every attack converged."""
    done = [r for r in runs if r is not None]
    if not done:
        return RunEvidence(seed=-1, psnr=[], lpips=None, thresholds={})
    first = done[0]
    lpips = (None if any(r.lpips is None for r in done)
             else [min(v) for v in zip(*(r.lpips for r in done), strict=True)])
    flags = [r.leaked for r in done]
    if any(f is None for f in flags) or len(done) < len(runs):
        leaked = None
        if any(f and any(f) for f in flags):  # a leak by one attack decides the trial
            leaked = [any(f[i] for f in flags if f) for i in range(len(first.psnr))]
    else:
        leaked = [any(v) for v in zip(*flags, strict=True)]
    return RunEvidence(seed=first.seed, psnr=[max(v) for v in zip(*(r.psnr for r in done),
                                                                  strict=True)],
                       lpips=lpips, thresholds=first.thresholds, iterations=first.iterations,
                       run_id=first.run_id, leaked=leaked, victims=first.victims, parts=done)


def _as_list(value: Any) -> list[Any] | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return list(value) if isinstance(value, list | tuple) else None


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
    is a spent budget, judged by the loss like a full run; with ``attack.race`` only the best
    restart's early end counts, the others were eliminated), or the best restart's running best
    fell by at most ``gain`` (relative) or :data:`FLOOR_GAIN` of its start over the judged window
    (module docstring). The history holds every 10th iteration of each restart, restarts one
    after another."""
    if run.parts:
        return all(converged(p, gain) for p in run.parts)
    if not run.history:
        return True
    ended_early = bool(run.iterations_used) and min(run.iterations_used) < run.iterations
    if run.plateau_stop and ended_early and not run.raced:
        return True
    chunks = _per_restart(run.history, run.iterations_used)
    best = min(chunks, key=lambda c: min(c))
    # Racing ends the losers early: only the best restart's own early end says it settled.
    if (run.raced and run.plateau_stop and len(chunks) == len(run.iterations_used)
            and run.iterations_used[chunks.index(best)] < run.iterations):
        return True
    start = best[0]
    if run.lr_decay and run.iterations_used and len(chunks) == len(run.iterations_used):
        used = run.iterations_used[chunks.index(best)]
        phase = best[:max(4, sum(1 for i in _recorded(used) if i < FIRST_DECAY * used))]
        cut = len(phase) // 2
    else:
        phase, cut = best, len(best) - max(1, len(best) // 5)
    before, after = min(phase[:cut] or phase), min(phase)
    drop = before - after
    return drop <= gain * max(abs(before), 1e-12) or drop <= FLOOR_GAIN * abs(start)


def _recorded(used: int) -> list[int]:
    """The iterations a restart of ``used`` iterations records: ``0, 10, 20, ...`` and its last."""
    return [i for i in range(used) if i % 10 == 0 or i == used - 1]


def _per_restart(history: list[float], used: list[int]) -> list[list[float]]:
    """Split the history by restart; the whole history when the lengths do not add up."""
    sizes = [len(_recorded(u)) for u in used]
    if not used or sum(sizes) != len(history) or min(sizes) < 5:
        return [history]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [history[a:a + n] for a, n in zip(starts, sizes, strict=True)]


def runs_for(rate: float, rule: VerdictRule) -> int | None:
    """Runs at which a level whose observed run leak ``rate`` persisted would be decided (None
    when no number up to :data:`MAX_SEEDS` would, e.g. a rate at the floor)."""
    design = rule.design
    for n in range(rule.min_trials, MAX_SEEDS + 1):
        k = round(rate * n)
        if design.leaks(k, n) or design.safe(k, n):
            return n
    return None


def level_verdict(runs: list[RunEvidence], rule: VerdictRule, *,
                  more: bool = False) -> dict[str, Any]:
    """The verdict of one ladder level over its runs (see the module docstring). ``more``: the
    audit may still run another round, so an undecided level is told to continue
    (``"continue": true``) rather than concluded."""
    design = rule.design
    flags = [f for r in runs for f in r.flags()]
    n_samples, at_risk = len(flags), sum(1 for a, _ in flags if a)
    lo, hi = wilson(at_risk, n_samples, rule.confidence)
    run_flags = [r.run_leaked for r in runs]
    n, k = len(runs), sum(1 for f in run_flags if f)
    unknown = sum(1 for f in run_flags if f is None)
    alpha = design.alpha_look
    bound = {"lower": design_bound(k, n, alpha, lower=True),
             "upper": design_bound(k, n, alpha, lower=False), "confidence": rule.confidence,
             "per_look_level": 1.0 - alpha, "method": "one-sided Clopper-Pearson, sequential "
             f"looks at {design.looks} runs, overall error <= {1 - rule.confidence:.0%}"}
    sample_leaks = [lk for _, lk in flags]
    leaked_share = (None if not n_samples or None in sample_leaks
                    else sum(sample_leaks) / n_samples)
    victims = [v for r in runs for v in r.victims]
    out: dict[str, Any] = {
        "seeds": n, "samples": n_samples, "at_risk": at_risk,
        "at_risk_share": at_risk / n_samples if n_samples else None, "leaked_share": leaked_share,
        "interval": [lo, hi], "converged": None, "suggest": None,
        "runs": n, "runs_leaked": k, "runs_undecidable": unknown,
        "run_leak_rate": k / n if n else None, "bound": bound,
        "victims_distinct": len(victims) == len(set(victims)), "continue": False}
    if not runs or not n_samples:
        return out | {"verdict": INCONCLUSIVE, "reason": "no finished run"}
    stuck = [r for r in runs if not converged(r, rule.converged_gain)]
    out["converged"] = not stuck
    if n >= rule.min_trials and design.leaks(k, n):
        return out | {"verdict": LEAKS, "reason": (
            f"{k} of {n} runs leaked; the run leak rate is at least {bound['lower']:.0%} "
            f"(lower bound), at or above the {rule.min_share:.0%} floor")}
    if n >= rule.min_trials and design.safe(k, n) and not stuck and not unknown:
        return out | {"verdict": SAFE, "reason": (
            f"{'no' if k == 0 else k} leak{'s' if k > 1 else ''} in {n} runs: the run leak rate "
            f"is at most {bound['upper']:.0%} ({rule.confidence:.0%} upper bound), below the "
            f"{rule.min_share:.0%} floor")}
    return out | _undecided(runs, k, n, unknown, stuck, rule, more=more, upper=bound["upper"])


def design_bound(k: int, n: int, alpha: float, *, lower: bool) -> float:
    """The design's bound of the run leak rate (see :mod:`gradleak.audit.sequential`)."""
    return lower_bound(k, n, alpha) if lower else upper_bound(k, n, alpha)


def _undecided(runs: list[RunEvidence], k: int, n: int, unknown: int, stuck: list[RunEvidence],
               rule: VerdictRule, *, more: bool, upper: float) -> dict[str, Any]:
    """An inconclusive level: why, and what would decide it."""
    reasons, suggest = [], []
    if k == 0:
        reasons.append(f"no leak in {n} run{'s' if n != 1 else ''} (upper bound {upper:.0%}, "
                       f"not below the {rule.min_share:.0%} floor)")
    else:
        reasons.append(f"{k} of {n} runs leaked: neither bound clears the "
                       f"{rule.min_share:.0%} floor")
    if stuck:
        iters = max(r.iterations for r in runs) or 0
        reasons.append(f"the attack was still improving in {len(stuck)} of {len(runs)} runs")
        suggest.append(f"attack.iterations={2 * iters}" if iters else "more attack iterations")
    if unknown:
        reasons.append(f"{unknown} run{'s' if unknown != 1 else ''} could not be judged (LPIPS "
                       "unavailable), so no safe verdict is possible")
    needed = rule.design.runs_to_safe(k, n) if k == 0 else runs_for(k / n, rule)
    if needed is not None and needed > n:
        suggest.append(f"--max-seeds {needed}")
    elif needed is None and k:
        suggest.append(f"attack.restarts={2 * max(1, max(len(r.iterations_used) for r in runs))}"
                       " (isolated leaks at the floor: inspect them)")
    go_on = more and not (stuck and k == 0)  # more runs cannot make a stuck attack converge
    return {"verdict": INCONCLUSIVE, "reason": "; ".join(reasons), "continue": go_on,
            "suggest": f"rerun with {' '.join(suggest)}" if suggest else None}


def combine(verdicts: list[str]) -> str:
    """Several levels' verdicts as one: any ``leaks`` leaks; all ``does not leak`` is safe."""
    if LEAKS in verdicts:
        return LEAKS
    if verdicts and all(v == SAFE for v in verdicts):
        return SAFE
    return INCONCLUSIVE


def best_sample(runs: list[RunEvidence]) -> dict[str, Any] | None:
    """The closest reconstruction of a level: lowest LPIPS (highest PSNR without LPIPS); for
    text the highest ROUGE-1, with both sentences."""
    found = None
    for r in runs:
        for i, rouge in enumerate(r.rouge1 or []):
            key = (-(rouge if rouge is not None else -1.0),)
            if found is None or key < found[0]:
                found = (key, {"run_id": r.run_id, "seed": r.seed, "sample": i, "rouge1": rouge,
                               "semantic": r.semantic[i] if r.semantic else None,
                               "original": _at(r.texts.get("original"), i),
                               "reconstruction": _at(r.texts.get("reconstruction"), i)})
        if r.rouge1 is not None:
            continue
        for i, p in enumerate(r.psnr):
            lp = None if r.lpips is None else r.lpips[i]
            key = (lp if lp is not None else math.inf, -p)
            if found is None or key < found[0]:
                found = (key, {"run_id": r.run_id, "seed": r.seed, "sample": i, "psnr": p,
                               "lpips": lp})
    return None if found is None else found[1]


def _at(values: list[Any] | None, i: int) -> Any:
    return values[i] if values and i < len(values) else None
