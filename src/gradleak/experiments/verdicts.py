"""Does a sweep's data support the paper's insight? Small, explicit rules over stored rows.

A rule is ``fn(rows, **params) -> Verdict`` registered with ``@register_rule(name)``; an
experiment's YAML names it (``verdict: {rule: trend, metric: lpips, ...}``) and may chain a
second check under ``also``. Rows are store rows with status ``ok``. "Better" always means
better for the attacker (more leakage): lower LPIPS/MSE, higher PSNR/SSIM/BRR/WSRR.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gradleak.errors import GradleakError
from gradleak.registry import Registry

RULES: Registry = Registry("verdict rule")
HIGHER_LEAKS = {"psnr": True, "ssim": True, "brr": True, "wsrr": True, "label_accuracy": True,
                "lpips": False, "mse": False}
SUPPORTED, PARTLY, NOT_SUPPORTED, INCONCLUSIVE = ("supported", "partly supported",
                                                  "not supported", "inconclusive")


@dataclass
class Verdict:
    status: str
    statement: str


def register_rule(name: str) -> Callable:
    return RULES.register(name)


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing metrics are None in the store)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


_num = number


def _key(value: Any) -> str:
    return str(value)


def _mean(rows: Sequence[dict[str, Any]], metric: str) -> float | None:
    vals = [v for r in rows if (v := _num(r.get(metric))) is not None]
    return statistics.fmean(vals) if vals else None


def _leaks_more(a: float, b: float, metric: str) -> bool:
    return a > b if HIGHER_LEAKS.get(metric, True) else a < b


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(xs) < 2 or len(set(ys)) < 2:
        return None
    return float(spearmanr(xs, ys).statistic)


def _combine(statuses: Sequence[str]) -> str:
    known = [s for s in statuses if s != INCONCLUSIVE]
    if not known:
        return INCONCLUSIVE
    if all(s == SUPPORTED for s in known):
        return SUPPORTED
    if all(s == NOT_SUPPORTED for s in known):
        return NOT_SUPPORTED
    return PARTLY


@register_rule("trend")
def trend(rows: Sequence[dict[str, Any]], *, metric: str, along: str, direction: str,
          per: str = "variant", min_rho: float = 0.5) -> Verdict:
    """``metric`` rises (``direction='increasing'``) or falls along axis ``along`` within each
    series ``per``: Spearman's rho of the per-value means has the right sign and |rho| >= min_rho."""
    if direction not in ("increasing", "decreasing"):
        raise GradleakError(f"bad trend direction {direction!r}; allowed: increasing, decreasing")
    sign = 1 if direction == "increasing" else -1
    series: dict[str, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        x = _num(r.get(along))
        if x is not None:
            series[_key(r.get(per))][x].append(r)
    parts, statuses = [], []
    for name, by_x in series.items():
        xs = sorted(by_x)
        means = [_mean(by_x[x], metric) for x in xs]
        pairs = [(x, m) for x, m in zip(xs, means, strict=True) if m is not None]
        rho = _spearman([p[0] for p in pairs], [p[1] for p in pairs])
        if rho is None:
            statuses.append(INCONCLUSIVE)
            parts.append(f"{name}: too few distinct values")
            continue
        ok = sign * rho >= min_rho
        statuses.append(SUPPORTED if ok else NOT_SUPPORTED)
        parts.append(f"{name}: {metric} {_fmt(pairs[0][1])} at {along}={pairs[0][0]:g} -> "
                     f"{_fmt(pairs[-1][1])} at {pairs[-1][0]:g} (Spearman {rho:+.2f})")
    status = _combine(statuses)
    return Verdict(status, f"{metric} expected {direction} with {along}: " + "; ".join(parts))


@register_rule("compare")
def compare(rows: Sequence[dict[str, Any]], *, metric: str, better: str, worse: str,
            share: float = 2 / 3) -> Verdict:
    """Variant ``better`` leaks more than ``worse`` in at least ``share`` of the matched cells
    (same grid labels and seed)."""
    cells: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in rows:
        v = _num(r.get(metric))
        if v is not None and r.get("variant") in (better, worse):
            cells[(_key(r.get("labels")), r.get("seed"))][r["variant"]] = v
    pairs = [(c[better], c[worse]) for c in cells.values() if better in c and worse in c]
    if not pairs:
        return Verdict(INCONCLUSIVE, f"no matched runs of {better} and {worse}")
    wins = sum(_leaks_more(a, b, metric) for a, b in pairs)
    ok = wins >= share * len(pairs)
    mb, mw = statistics.fmean(a for a, _ in pairs), statistics.fmean(b for _, b in pairs)
    return Verdict(SUPPORTED if ok else NOT_SUPPORTED,
                   f"{better} leaks more than {worse} in {wins}/{len(pairs)} matched runs "
                   f"(mean {metric} {_fmt(mb)} vs {_fmt(mw)})")


@register_rule("groups")
def groups(rows: Sequence[dict[str, Any]], *, metric: str, axis: str, worse: Sequence[Any],
           better: Sequence[Any], variant: str | None = None) -> Verdict:
    """Runs whose ``axis`` value is in ``worse`` leak less (mean ``metric``) than those in
    ``better``, for each variant (or only ``variant``)."""
    worse_k, better_k = {_key(v) for v in worse}, {_key(v) for v in better}
    by_variant: dict[str, dict[str, list]] = defaultdict(lambda: {"worse": [], "better": []})
    for r in rows:
        if variant is not None and r.get("variant") != variant:
            continue
        k = _key(r.get(axis))
        if k in worse_k:
            by_variant[r["variant"]]["worse"].append(r)
        elif k in better_k:
            by_variant[r["variant"]]["better"].append(r)
    parts, statuses = [], []
    for name, g in by_variant.items():
        mw, mb = _mean(g["worse"], metric), _mean(g["better"], metric)
        if mw is None or mb is None:
            statuses.append(INCONCLUSIVE)
            continue
        ok = _leaks_more(mb, mw, metric)
        statuses.append(SUPPORTED if ok else NOT_SUPPORTED)
        parts.append(f"{name}: mean {metric} {_fmt(mw)} on {sorted(worse_k)} vs {_fmt(mb)} on "
                     f"{sorted(better_k)}")
    return Verdict(_combine(statuses), "; ".join(parts) or "no runs in either group")


@register_rule("reference")
def reference(rows: Sequence[dict[str, Any]], *, metric: str, reference: str | Sequence[str],
              expect: str | dict[str, str], match: str = "model.name") -> Verdict:
    """Each variant leaks ``worse`` or ``better`` than the reference variant (matched on
    ``match``, e.g. the same model); ``expect`` is one word for all or a dict per variant."""
    refs = [reference] if isinstance(reference, str) else list(reference)
    means: dict[tuple[str, str], float] = {}
    grouped: dict[tuple[str, str], list] = defaultdict(list)
    for r in rows:
        grouped[(r.get("variant"), _key(r.get(match)))].append(r)
    for k, rs in grouped.items():
        m = _mean(rs, metric)
        if m is not None:
            means[k] = m
    ref_by_match = {mk: v for (var, mk), v in means.items() if var in refs}
    agree, total, parts = 0, 0, []
    for (var, mk), v in means.items():
        if var in refs or mk not in ref_by_match:
            continue
        want = expect if isinstance(expect, str) else expect.get(var)
        if want not in ("better", "worse"):
            continue
        leaks_more = _leaks_more(v, ref_by_match[mk], metric)
        hit = leaks_more if want == "better" else not leaks_more
        agree += hit
        total += 1
        parts.append(f"{var}: {_fmt(v)} vs {_fmt(ref_by_match[mk])} "
                     f"({'as' if hit else 'not as'} expected: {want})")
    if not total:
        return Verdict(INCONCLUSIVE, "no variant could be compared with the reference")
    status = SUPPORTED if agree >= 2 / 3 * total else (PARTLY if agree else NOT_SUPPORTED)
    return Verdict(status, f"{agree}/{total} variants move {metric} in the paper's direction "
                           f"relative to {', '.join(refs)}: " + "; ".join(parts))


@register_rule("tradeoff")
def tradeoff(rows: Sequence[dict[str, Any]], *, max_drop: float = 5.0,
             fails: Sequence[str] = ()) -> Verdict:
    """Each defense family (``defense.name``) has a setting that defends (LPIPS above the
    leakage threshold) with an accuracy drop <= ``max_drop`` points; families in ``fails`` have
    none (the paper's clipping)."""
    fam: dict[str, list] = defaultdict(list)
    for r in rows:
        if r.get("defense.name") not in (None, "none"):
            fam[r["defense.name"]].append(r)
    if not fam:
        return Verdict(INCONCLUSIVE, "no defended runs")
    parts, hits = [], 0
    for name, rs in fam.items():
        good = [r for r in rs if _num(r.get("lpips")) is not None
                and r["lpips"] > r.get("metrics.lpips_threshold", 0.1)
                and _num(r.get("accuracy_drop")) is not None and r["accuracy_drop"] <= max_drop]
        expected_good = name not in fails
        hit = bool(good) == expected_good
        hits += hit
        best = min(good, key=lambda r: r["accuracy_drop"]) if good else None
        parts.append(f"{name}: " + (f"defends at {best['variant']} (LPIPS {_fmt(best['lpips'])}, "
                                    f"drop {_fmt(best['accuracy_drop'])} points)" if best
                                    else "no setting defends within the accuracy budget")
                     + ("" if hit else " (paper says otherwise)"))
    status = SUPPORTED if hits == len(fam) else (PARTLY if hits else NOT_SUPPORTED)
    return Verdict(status, "; ".join(parts))


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
