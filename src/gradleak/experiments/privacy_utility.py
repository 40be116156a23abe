"""Privacy-utility trade-off of post-processing defenses in federated training (paper Sec. 6,
Fig. 11, App. C iii, Tab. 6).

For every defense and strength of a grid (App. C iii: QSGD 1-4 bits and signSGD, top-k
sparsity 0.6-0.95, value clipping bounds 0.5-0.01, Gaussian multipliers 0.05-0.25, plus no
defense) the experiment trains the FL system with every client applying that defense
(:func:`gradleak.fl.server.run_federated`), takes

* utility: the final test accuracy, and its drop versus no defense (same seed, so the same client
  sampling and data order);
* privacy: the attack (``cfg.attack``) on what the server observes of the victim at
  ``fl.attack_round``, scored with :func:`gradleak.metrics.score` (PSNR, SSIM, LPIPS, BRR).

Outputs in ``out``: ``privacy_utility.csv`` (one row per defense x strength), ``results.json``
(the store: config, rows, best trade-off per defense) and ``privacy_utility.png`` (x = LPIPS,
y = accuracy drop in points, lines at a 5-point drop and at the LPIPS leakage threshold), all
written atomically after every row. A rerun with the same config skips rows already in the store.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradleak.attacks import build_attack
from gradleak.config import Config, flatten
from gradleak.defenses.grid import GridPoint, point_config
from gradleak.errors import GradleakError
from gradleak.io import write_json, write_text
from gradleak.metrics import defends
from gradleak.provenance import git_commit, versions
from gradleak.runs.spec import Experiment, Plan
from gradleak.threat import ThreatModel

QUICK: dict[str, Any] = {
    "data": {"dataset": "skimage", "resolution": 32},
    "model": {"name": "mlp", "hidden": [128]},
    "client": {"protocol": "fedavg", "local_epochs": 1, "batch_size": 16, "lr": 0.1},
    "fl": {"clients": 10, "fraction": 0.5, "rounds": 5, "victim_samples": 1},
    "attack": {"name": "ig", "iterations": 300},
}
"""``--quick``: the embedded skimage data, an MLP (no BN), 10 clients, 5 rounds, a 300-iteration
attack on a one-sample victim; minutes on 2 CPU cores. Config file and overrides still win."""

EXPERIMENT = "privacy_utility"
ACCURACY_DROP_LINE = 5.0  # percentage points (paper Fig. 11's blue line)
CSV_COLUMNS = ("defense", "param", "value", "final_accuracy", "accuracy_drop", "psnr", "ssim",
               "lpips", "mse", "brr", "label_accuracy", "leaked", "victim_epsilon", "attack_round",
               "fl_seconds", "attack_seconds", "test_data")


@dataclass
class PrivacyUtilityResult:
    rows: list[dict[str, Any]]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    csv_path: Path | None = None
    json_path: Path | None = None
    plot_path: Path | None = None
    seconds: float = 0.0


def best_tradeoff(rows: Sequence[dict[str, Any]], lpips_threshold: float) -> dict[str, str]:
    """Per defense, the row key of its best trade-off (paper Fig. 11): among settings that
    defend (LPIPS above the threshold) the smallest accuracy drop, else the largest LPIPS."""
    best: dict[str, str] = {}
    for name in dict.fromkeys(r["defense"] for r in rows):
        mine = [r for r in rows if r["defense"] == name and r.get("lpips") is not None]
        if not mine:
            continue
        safe = [r for r in mine if defends(r["lpips"], lpips_threshold=lpips_threshold)]
        pick = (min(safe, key=lambda r: (r["accuracy_drop"] if r["accuracy_drop"] is not None
                                         else math.inf)) if safe
                else max(mine, key=lambda r: r["lpips"]))
        best[name] = pick["key"]
    return best


def privacy_utility_plan(cfg: Config, grid: Sequence[GridPoint], *,
                         save_checkpoints: bool = False) -> Plan:
    """The grid as a sweep :class:`Plan` of kind ``privacy_utility``: one variant per grid point
    (named by its key) over the user's whole config, seed ``cfg.seed``."""
    base = {k: v for k, v in flatten(cfg.to_dict()) if not k.startswith("defense.") and k != "seed"}
    variants = {}
    for point in grid:
        pcfg = point_config(cfg, point)
        variants[point.key] = {k: v for k, v in flatten(pcfg.to_dict()) if k.startswith("defense.")}
    spec = {"title": "privacy-utility trade-off (Fig. 11)", "kind": "privacy_utility",
            "base": base, "variants": variants, "seeds": [cfg.seed],
            "options": {"save_checkpoints": True} if save_checkpoints else {}}
    exp = Experiment(name=EXPERIMENT, title=spec["title"], tests="", insight="",
                     kind="privacy_utility", spec=spec)
    return Plan(exp, "paper", exp.validate("paper"))


def run_privacy_utility(cfg: Config, out: str | Path, *, grid: Sequence[GridPoint],
                        progress: bool = False, save_checkpoints: bool = False,
                        log: Callable[[str], None] = lambda _m: None) -> PrivacyUtilityResult:
    """Run every grid point not yet in ``out/results.sqlite`` (the one sweep and store) and
    rewrite ``privacy_utility.csv`` and ``results.json`` from the store. The scatter plot is
    rendered by :func:`gradleak.report.plots.save_tradeoff` (the command does that)."""
    from gradleak.runs.sweep import run_sweep

    started = time.perf_counter()
    out = Path(out)
    if cfg.threat.malicious:
        raise GradleakError("privacy-utility models an honest-but-curious server; set "
                            "threat.malicious=false")
    ThreatModel.from_config(cfg.threat).require(build_attack(cfg.attack).needs(),
                                                who=f"attack {cfg.attack.name!r}")
    json_path, csv_path = out / "results.json", out / "privacy_utility.csv"
    _check_digest(json_path, cfg.digest())
    plan = privacy_utility_plan(cfg, grid, save_checkpoints=save_checkpoints)  # validates all
    swept = run_sweep(plan, out, progress=progress, log=log)
    rows = stored_rows(out, plan, grid)
    _write_all(cfg, grid, rows, json_path, csv_path)
    return PrivacyUtilityResult(rows=rows, ran=list(swept.ok), skipped=list(swept.skipped),
                                failed=dict(swept.failed), csv_path=csv_path, json_path=json_path,
                                plot_path=out / "privacy_utility.png",
                                seconds=time.perf_counter() - started)


def stored_rows(out: Path, plan: Plan, grid: Sequence[GridPoint]) -> list[dict[str, Any]]:
    """The plan's finished runs from the store, as one row per grid point (``CSV_COLUMNS`` and
    more), in grid order, with the accuracy drop against the undefended run."""
    from gradleak.runs.store import ResultStore

    points = {p.key: p for p in grid}
    wanted = {r.run_id for r in plan.runs}
    with ResultStore(out) as store:
        stored = [r for r in store.rows(experiment=EXPERIMENT, status="ok") if r["run_id"] in wanted]
    rows = [_row(points[r["variant"]], r) for r in stored if r["variant"] in points]
    _fill_drops(rows)
    return _ordered(rows, grid)


# --- rows, store and outputs ------------------------------------------------------------------


def _row(point: GridPoint, stored: dict[str, Any]) -> dict[str, Any]:
    extra = stored.get("result") or {}
    return {
        "key": point.key, "defense": point.defense, "param": point.param, "value": point.value,
        "final_accuracy": stored.get("final_accuracy"), "accuracy_drop": None,
        "accuracy_curve": extra.get("accuracy"),
        **{k: stored.get(k) for k in ("psnr", "ssim", "lpips", "mse", "brr", "label_accuracy",
                                      "victim_epsilon", "max_epsilon", "attack_round",
                                      "observed_samples", "fl_seconds", "attack_seconds")},
        "leaked": None if stored.get("leaked") is None else bool(stored["leaked"]),
        "secure_aggregation": bool(stored.get("secure_aggregation")),
        # Where the accuracy was measured (e.g. a held-out part when the data had no test split).
        "test_data": stored.get("test_data"),
    }


def _fill_drops(rows: list[dict[str, Any]]) -> None:
    """accuracy_drop = (accuracy without defense - accuracy) in percentage points."""
    base = next((r["final_accuracy"] for r in rows if r["defense"] == "none"), None)
    for r in rows:
        r["accuracy_drop"] = None if base is None else 100.0 * (base - r["final_accuracy"])


def _ordered(rows: list[dict[str, Any]], grid: Sequence[GridPoint]) -> list[dict[str, Any]]:
    rank = {p.key: i for i, p in enumerate(grid)}
    return sorted(rows, key=lambda r: (rank.get(r["key"], len(rank)), r["key"]))


def _check_digest(json_path: Path, digest: str) -> None:
    """One output folder, one config: refuse a folder whose outputs came from another config."""
    if not json_path.is_file():
        return
    try:
        store = json.loads(json_path.read_text())
    except json.JSONDecodeError:
        raise GradleakError(f"{str(json_path)!r} is not valid JSON; move it away to start over") from None
    found = store.get("config_digest") if isinstance(store, dict) else None
    if found != digest:
        raise GradleakError(f"{str(json_path.parent)!r} holds privacy-utility results of another config "
                            f"(digest {found} != {digest}); use another --out")


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _write_all(cfg: Config, grid: Sequence[GridPoint], rows: list[dict[str, Any]], json_path: Path,
               csv_path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    write_text(csv_path, buf.getvalue())
    thresholds = {"psnr": cfg.metrics.psnr_threshold, "lpips": cfg.metrics.lpips_threshold,
                  "accuracy_drop_points": ACCURACY_DROP_LINE}
    write_json(json_path, _clean({
        "experiment": EXPERIMENT,
        "paper": "Sec. 6, Fig. 11, App. C iii",
        "config_digest": cfg.digest(),
        "config": cfg.to_dict(),
        "grid": [{"key": p.key, "defense": p.defense, "param": p.param, "value": p.value}
                 for p in grid],
        "thresholds": thresholds,
        "best": best_tradeoff(rows, cfg.metrics.lpips_threshold),
        "rows": rows,
        "store": "results.sqlite",
        "versions": versions(),
        "git_commit": git_commit(),
    }))
