"""Does a sweep's data support the paper's insight? Small, explicit rules over stored rows, each
with its statistical evidence.

A rule is ``fn(rows, **params) -> Verdict`` registered with ``@register_rule(name)``; an
experiment's YAML names it (``verdict: {rule: trend, metric: lpips, ...}``) and may chain a
second check under ``also``. Rows are store rows with status ``ok``. "Better" always means
better for the attacker (more leakage): lower LPIPS/MSE, higher PSNR/SSIM/BRR/WSRR.

The unit of evidence is the seed (a seed fixes the model initialisation, the victim's samples and
the attack's start, so runs sharing a seed are paired). Each rule computes one effect per seed,
signed so that > 0 is the paper's direction, and reports their mean with a Student-t 95 %
interval over seeds (description only). The status comes from a randomisation test of that mean
(``report/stats.py``), exact at the few seeds a quick profile affords: ``trend`` permutes the
grid within each seed (the null: the metric is exchangeable across a seed's grid points; a
seed's series are permuted together), the paired rules (``compare``, ``groups``, ``reference``)
flip the sign of each seed's effect (the null: it is symmetric about 0). ``supported`` when the
one-sided p-value in the paper's direction is <= ``ALPHA`` (0.025, the old interval's level),
``contradicted`` when the opposite one is, else ``inconclusive`` (also with fewer than
``MIN_SEEDS`` seeds). The tests are discrete: 3 seeds of a paired effect cannot reach p <= 0.025
(smallest p 1/8; 6 seeds are needed), and the statement says so. ``tradeoff`` compares levels
with fixed lines instead: one-sided Student-t tests per defense setting, Bonferroni over a
family's settings (a family defends if any setting does).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from gradleak.errors import GradleakError
from gradleak.metrics import METRICS, within_budget
from gradleak.metrics import defends as setting_defends
from gradleak.metrics.text import TEXT_METRICS
from gradleak.registry import Registry
from gradleak.report.evidence import (
    CONTRADICTED,
    INCONCLUSIVE,
    INTERVAL,
    SUPPORTED,
    Part,
    Verdict,
    blocks,
    decide,
    part,
    pooled,
    verdict_of,
)
from gradleak.report.evidence import fmt as _fmt
from gradleak.report.stats import ALPHA, MIN_SEEDS, PERMUTATION, mean_interval, spearman

RULES: Registry = Registry("verdict rule")
# Direction of more leakage per metric, from the metrics' own metadata (one definition).
REPORTED_METRICS = {**METRICS, **TEXT_METRICS}  # image and text runs share the store and report
HIGHER_LEAKS = {name: info.higher_is_better for name, info in REPORTED_METRICS.items()}
NOT_SUPPORTED = CONTRADICTED  # the constant's earlier name
TRADEOFF_TEST = "one-sided Student-t tests per setting, Bonferroni over a family's settings"
# Re-exported: users' scripts import these from here.
__all__ = ["CONTRADICTED", "INCONCLUSIVE", "INTERVAL", "MIN_SEEDS", "SUPPORTED", "Part",
           "Verdict", "decide", "judge", "mean_interval", "register_rule"]


def register_rule(name: str) -> Callable:
    return RULES.register(name)


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing metrics are None in the store)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


_num = number


def _key(value: Any) -> str:
    return str(value)


def _leak_sign(metric: str) -> int:
    return 1 if HIGHER_LEAKS.get(metric, True) else -1


def threshold(rows: Sequence[dict[str, Any]], metric: str) -> float | None:
    """The leakage threshold of ``metric`` the ``rows`` were scored with (their
    ``metrics.<metric>_threshold`` when they agree), else the paper's; None if it has none."""
    info = REPORTED_METRICS.get(metric)
    if info is None or info.threshold is None:
        return None
    used = {_num(r.get(info.threshold_key)) for r in rows} - {None}
    return used.pop() if len(used) == 1 else info.threshold


@register_rule("trend")
def trend(rows: Sequence[dict[str, Any]], *, metric: str, along: str, direction: str,
          per: str = "variant") -> Verdict:
    """``metric`` rises (``direction='increasing'``) or falls along axis ``along`` within each
    series ``per``. Effect per seed: Spearman's rho between ``along`` and the seed's mean
    ``metric`` at each value (signed: + = ``direction``), averaged over the series; tested by
    permuting the grid within each seed."""
    if direction not in ("increasing", "decreasing"):
        raise GradleakError(f"bad trend direction {direction!r}; allowed: increasing, decreasing")
    sign = 1 if direction == "increasing" else -1
    cells: dict[str, dict[Any, dict[float, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        x, v = _num(r.get(along)), _num(r.get(metric))
        if x is not None and v is not None:
            cells[_key(r.get(per))][r.get("seed")][x].append(v)
    # series[seed][part] = (grid, the seed's mean metric along it), for parts with a rho
    series: dict[Any, dict[str, tuple[tuple[float, ...], list[float]]]] = defaultdict(dict)
    effects_of: dict[Any, list[float]] = defaultdict(list)  # per seed, its parts' signed rhos
    parts, texts = [], {}
    for name, by_seed in cells.items():
        effects = {}
        for s, by_x in by_seed.items():
            xs = tuple(sorted(by_x))
            ys = [statistics.fmean(by_x[x]) for x in xs]
            if (rho := spearman(ys)) is not None:
                effects[s], series[s][name] = sign * rho, (xs, ys)
                effects_of[s].append(sign * rho)
        at_x: dict[float, list[float]] = defaultdict(list)
        for by_x in by_seed.values():
            for x, vs in by_x.items():
                at_x[x].extend(vs)
        xs = sorted(at_x)
        texts[name] = (f"{name}: {metric} {_fmt(statistics.fmean(at_x[xs[0]]))} at {along}="
                       f"{xs[0]:g} -> {_fmt(statistics.fmean(at_x[xs[-1]]))} at {xs[-1]:g}")
        units = [u for s in effects for u in blocks({name: series[s][name]}, sign / len(effects))]
        parts.append(part(name, effects, units, PERMUTATION, texts[name], (-1.0, 1.0)))
    units = [u for by_part in series.values()
             for u in blocks(by_part, sign / (len(series) * len(by_part)))]
    by_seed = [statistics.fmean(effects_of[s]) for s in series]
    return verdict_of(parts, by_seed, units, PERMUTATION,
                      measure=f"mean per-seed Spearman rho ({direction} = +)",
                      statement=f"{metric} expected {direction} with {along}", bounds=(-1.0, 1.0))


@register_rule("compare")
def compare(rows: Sequence[dict[str, Any]], *, metric: str, better: str, worse: str) -> Verdict:
    """Variant ``better`` leaks more than ``worse`` in matched cells (same grid labels and seed).
    Effect per seed: the mean over cells of ``metric`` of ``better`` minus ``worse`` (signed: +
    = ``better`` leaks more)."""
    sign = _leak_sign(metric)
    cells: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in rows:
        v = _num(r.get(metric))
        if v is not None and r.get("variant") in (better, worse):
            cells[(_key(r.get("labels")), r.get("seed"))][r["variant"]] = v
    diffs: dict[Any, list[float]] = defaultdict(list)
    pairs = []
    for (_, seed), c in cells.items():
        if better in c and worse in c:
            pairs.append((c[better], c[worse]))
            diffs[seed].append(sign * (c[better] - c[worse]))
    if not pairs:
        return Verdict(INCONCLUSIVE, f"no matched runs of {better} and {worse}",
                       measure=f"{metric} difference")
    wins = sum(sign * (a - b) > 0 for a, b in pairs)
    mb, mw = statistics.fmean(a for a, _ in pairs), statistics.fmean(b for _, b in pairs)
    text = (f"{better} leaks more than {worse} in {wins}/{len(pairs)} matched runs "
            f"(mean {metric} {_fmt(mb)} vs {_fmt(mw)})")
    return pooled({better: {s: statistics.fmean(d) for s, d in diffs.items()}}, {better: text},
                   measure=f"mean {metric} advantage of {better} (+ = leaks more)",
                   statement=f"{better} vs {worse}")


@register_rule("groups")
def groups(rows: Sequence[dict[str, Any]], *, metric: str, axis: str, worse: Sequence[Any],
           better: Sequence[Any], variant: str | None = None) -> Verdict:
    """Runs whose ``axis`` value is in ``worse`` leak less than those in ``better``, for each
    variant (or only ``variant``). Effect per seed: mean ``metric`` of the ``better`` group
    minus the ``worse`` group (signed: + = ``better`` leaks more), averaged over variants."""
    sign = _leak_sign(metric)
    worse_k, better_k = {_key(v) for v in worse}, {_key(v) for v in better}
    cells: dict[str, dict[Any, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: {"worse": [], "better": []}))
    for r in rows:
        v = _num(r.get(metric))
        if v is None or (variant is not None and r.get("variant") != variant):
            continue
        k = _key(r.get(axis))
        group = "worse" if k in worse_k else "better" if k in better_k else None
        if group:
            cells[r["variant"]][r.get("seed")][group].append(v)
    per_part, texts = {}, {}
    for name, by_seed in cells.items():
        per_part[name] = {s: sign * (statistics.fmean(g["better"]) - statistics.fmean(g["worse"]))
                          for s, g in by_seed.items() if g["better"] and g["worse"]}
        mw = [x for g in by_seed.values() for x in g["worse"]]
        mb = [x for g in by_seed.values() for x in g["better"]]
        texts[name] = (f"{name}: mean {metric} {_fmt(statistics.fmean(mw) if mw else None)} on "
                       f"{sorted(worse_k)} vs {_fmt(statistics.fmean(mb) if mb else None)} on "
                       f"{sorted(better_k)}")
    return pooled(per_part, texts, measure=f"mean {metric} advantage of {sorted(better_k)}",
                   statement=f"{sorted(better_k)} leak more than {sorted(worse_k)}")


@register_rule("reference")
def reference(rows: Sequence[dict[str, Any]], *, metric: str, reference: str | Sequence[str],
              expect: str | dict[str, str], match: str = "model.name") -> Verdict:
    """Each variant leaks ``worse`` or ``better`` than the reference variant (matched on
    ``match``, e.g. the same model, and seed); ``expect`` is one word for all or a dict per
    variant. Effect per seed: the mean over variants of ``metric`` minus the reference's, signed
    so that + = the expected direction."""
    refs = [reference] if isinstance(reference, str) else list(reference)
    sign = _leak_sign(metric)
    values: dict[tuple[str, str, Any], list[float]] = defaultdict(list)
    for r in rows:
        v = _num(r.get(metric))
        if v is not None:
            values[(r.get("variant"), _key(r.get(match)), r.get("seed"))].append(v)
    ref_at = {(mk, s): statistics.fmean(vs) for (var, mk, s), vs in values.items() if var in refs}
    per_part: dict[str, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    raw: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for (var, mk, s), vs in values.items():
        want = expect if isinstance(expect, str) else expect.get(var)
        if var in refs or (mk, s) not in ref_at or want not in ("better", "worse"):
            continue
        v, ref = statistics.fmean(vs), ref_at[(mk, s)]
        per_part[var][s].append((1 if want == "better" else -1) * sign * (v - ref))
        raw[var].append((v, ref))
    if not per_part:
        return Verdict(INCONCLUSIVE, "no variant could be compared with the reference",
                       measure=f"{metric} shift")
    texts = {}
    for var, pairs in raw.items():
        want = expect if isinstance(expect, str) else expect.get(var)
        mv, mr = statistics.fmean(p[0] for p in pairs), statistics.fmean(p[1] for p in pairs)
        texts[var] = f"{var}: {_fmt(mv)} vs {_fmt(mr)} (expected: {want})"
    verdict = pooled({v: {s: statistics.fmean(d) for s, d in by_s.items()}
                       for v, by_s in per_part.items()}, texts,
                      measure=f"mean {metric} shift in the paper's direction",
                      statement=f"variants vs {', '.join(refs)}")
    agree = sum((p.effect or 0) > 0 for p in verdict.parts)
    verdict.statement = (f"{agree}/{len(verdict.parts)} variants move {metric} in the paper's "
                         f"direction relative to {', '.join(refs)} (mean over seeds); "
                         + verdict.statement.split(": ", 1)[1])
    return verdict


def _setting(rs: list[dict[str, Any]], thr: float, max_drop: float, m: int) -> dict[str, Any]:
    """One defense setting over seeds: LPIPS and accuracy drop with 95 % intervals; ``defends``
    is True when both clear their lines at one-sided level ALPHA / ``m`` (the family defends if
    any of its ``m`` settings does: Bonferroni keeps that claim at ALPHA), False when one 95 %
    interval lies on the wrong side, else None (too few seeds, or undecided)."""
    lps = [v for r in rs if (v := _num(r.get("lpips"))) is not None]
    drs = [v for r in rs if (v := _num(r.get("accuracy_drop"))) is not None]
    (lp, lp_ci), (dr, dr_ci) = mean_interval(lps), mean_interval(drs)
    level = 1 - 2 * ALPHA / m  # two-sided level whose one-sided tail is ALPHA / m
    lp_b, dr_b = mean_interval(lps, level=level)[1], mean_interval(drs, level=level)[1]
    seeds = len({r.get("seed") for r in rs})
    defends = None
    if lp_b and dr_b and seeds >= MIN_SEEDS:
        if setting_defends(lp_b[0], dr_b[1], lpips_threshold=thr, max_drop=max_drop):
            defends = True  # even the bounds least favourable to the defense clear both lines
        elif not (lp_ci[1] >= thr and within_budget(dr_ci[0], max_drop)):
            defends = False  # one 95 % interval lies wholly on the wrong side
    return {"variant": rs[0]["variant"], "lpips": lp, "lpips_ci": lp_ci, "drop": dr,
            "drop_ci": dr_ci, "defends": defends, "seeds": seeds}


def _ci_text(m: float | None, ci: tuple[float, float] | None) -> str:
    return _fmt(m) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")


@register_rule("tradeoff")
def tradeoff(rows: Sequence[dict[str, Any]], *, max_drop: float = 5.0,
             fails: Sequence[str] = (), families: dict[str, str] | None = None) -> Verdict:
    """Each defense family (``defense.name``, renamed by ``families``, e.g. ``{signsgd: qsgd}``
    for the paper's Q family) has a setting that defends (LPIPS above the leakage threshold)
    with an accuracy drop <= ``max_drop`` points; families in ``fails`` have none (the paper's
    clipping). A setting defends when one-sided Student-t tests over seeds put its LPIPS above
    and its drop below their lines at level ALPHA / (the family's settings); it fails when
    either 95 % interval lies on the wrong side. A
    family matching the paper is supported, one decisively against it contradicted; the verdict
    is contradicted if any family is, supported if all are, else inconclusive."""
    fam: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("defense.name") not in (None, "none"):
            name = (families or {}).get(r["defense.name"], r["defense.name"])
            fam[name][r["variant"]].append(r)
    if not fam:
        return Verdict(INCONCLUSIVE, "no defended runs", measure="families as the paper says")
    parts = []
    for name, by_variant in fam.items():
        thr = threshold(next(iter(by_variant.values())), "lpips")
        settings = [_setting(rs, thr, max_drop, len(by_variant)) for rs in by_variant.values()]
        sure = [s for s in settings if s["defends"]]
        outcome = True if sure else False if all(s["defends"] is False for s in settings) else None
        within = [s for s in settings if s["drop"] is not None and s["drop"] <= max_drop]
        best = (min(sure, key=lambda s: s["drop"]) if sure else
                max(within, key=lambda s: s["lpips"] or 0.0) if within else
                min(settings, key=lambda s: s["drop"] if s["drop"] is not None else math.inf))
        expected = name not in fails
        status = INCONCLUSIVE if outcome is None else SUPPORTED if outcome == expected \
            else CONTRADICTED
        says = {True: "defends", False: "does not defend", None: "undecided"}[outcome]
        text = (f"{name}: {says} within {max_drop:g} points (paper: "
                f"{'defends' if expected else 'does not'}); closest {best['variant']}: LPIPS "
                f"{_ci_text(best['lpips'], best['lpips_ci'])}, drop "
                f"{_ci_text(best['drop'], best['drop_ci'])} over {best['seeds']} seeds")
        parts.append(Part(name, status, best["lpips"], best["lpips_ci"], best["seeds"], text))
    statuses = {p.status for p in parts}
    status = (CONTRADICTED if CONTRADICTED in statuses else
              SUPPORTED if statuses == {SUPPORTED} else INCONCLUSIVE)
    agree = sum(p.status == SUPPORTED for p in parts)
    seeds = len({r.get("seed") for r in rows})
    return Verdict(status, "; ".join(p.text for p in parts), agree / len(parts), None, seeds,
                   f"share of {len(parts)} families as the paper says",
                   "per-family Student-t 95% intervals of LPIPS and accuracy drop over seeds",
                   parts=parts, test=TRADEOFF_TEST)


def judge(rows: Sequence[dict[str, Any]], spec: dict[str, Any] | None) -> list[Verdict]:
    """Apply an experiment's ``verdict`` spec (and its chained ``also``) to its ok rows."""
    out: list[Verdict] = []
    while spec:
        params = {k: v for k, v in spec.items() if k not in ("rule", "also")}
        try:
            out.append(RULES.get(spec["rule"])(rows, **params))
        except TypeError as e:
            raise GradleakError(f"bad parameters for verdict rule {spec['rule']!r}: {e}") from None
        spec = spec.get("also")
    return out
