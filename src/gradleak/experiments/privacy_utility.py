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

import copy
import csv
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradleak.attacks import build_attack
from gradleak.config import Config, set_key
from gradleak.errors import GradleakError
from gradleak.fl.server import FederatedRun, dataset_tensors, run_federated
from gradleak.images import save_comparison
from gradleak.io import atomic_write, write_json, write_text
from gradleak.provenance import git_commit, versions
from gradleak.scenario import Scenario, Score
from gradleak.threat import ThreatModel

# defense -> (DefenseConfig field varied, paper grid for ResNet-18, App. C iii).
PAPER_GRIDS: dict[str, tuple[str | None, list[Any]]] = {
    "none": (None, [None]),
    "qsgd": ("bits", [1, 2, 3, 4]),
    "signsgd": (None, [None]),
    "topk": ("sparsity", [0.6, 0.7, 0.8, 0.9, 0.95]),
    "clip": ("bound", [0.5, 0.3, 0.1, 0.05, 0.01]),
    "gaussian": ("noise_multiplier", [0.05, 0.1, 0.15, 0.2, 0.25]),
    "clip_norm": ("clip_norm", [10.0, 5.0, 1.0, 0.5, 0.1]),  # not in the paper's grid
}
DEFAULT_DEFENSES = ("qsgd", "signsgd", "topk", "clip", "gaussian")

QUICK: dict[str, Any] = {
    "data": {"dataset": "skimage", "resolution": 32},
    "model": {"name": "mlp", "hidden": [128]},
    "client": {"protocol": "fedavg", "local_epochs": 1, "batch_size": 16, "lr": 0.1},
    "fl": {"clients": 10, "fraction": 0.5, "rounds": 5, "victim_samples": 1},
    "attack": {"name": "ig", "iterations": 300},
}
"""``--quick``: the embedded skimage data, an MLP (no BN), 10 clients, 5 rounds, a 300-iteration
attack on a one-sample victim; minutes on 2 CPU cores. Config file and overrides still win."""

ACCURACY_DROP_LINE = 5.0  # percentage points (paper Fig. 11's blue line)
CSV_COLUMNS = ("defense", "param", "value", "final_accuracy", "accuracy_drop", "psnr", "ssim",
               "lpips", "mse", "brr", "label_accuracy", "leaked", "victim_epsilon", "attack_round",
               "fl_seconds", "attack_seconds")


@dataclass
class GridPoint:
    """One defense setting: ``defense.<param> = value`` (``param`` None for settings-free ones)."""

    defense: str
    param: str | None = None
    value: Any = None

    @property
    def key(self) -> str:
        return self.defense if self.param is None else f"{self.defense}-{self.param}={self.value}"


@dataclass
class PrivacyUtilityResult:
    rows: list[dict[str, Any]]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    csv_path: Path | None = None
    json_path: Path | None = None
    plot_path: Path | None = None
    seconds: float = 0.0


def build_grid(defenses: Sequence[str] = DEFAULT_DEFENSES,
               overrides: dict[str, list[Any]] | None = None) -> list[GridPoint]:
    """``none`` first, then every listed defense over its paper grid (or ``overrides[name]``)."""
    overrides = overrides or {}
    unknown = [d for d in [*defenses, *overrides] if d not in PAPER_GRIDS]
    if unknown:
        raise GradleakError(f"unknown defense {unknown[0]!r} for privacy-utility; allowed: "
                            f"{', '.join(PAPER_GRIDS)}")
    stray = [d for d in overrides if d not in defenses and d != "none"]
    if stray:
        raise GradleakError(f"--grid names {stray[0]!r}, which is not in --defenses")
    points = [GridPoint("none")]
    for name in dict.fromkeys(defenses):
        if name == "none":
            continue
        param, values = PAPER_GRIDS[name]
        if name in overrides:
            if param is None:
                raise GradleakError(f"defense {name!r} has no strength to grid over")
            values = overrides[name]
        points += [GridPoint(name, param, v) for v in values]
    return points


def point_config(cfg: Config, point: GridPoint) -> Config:
    """A copy of ``cfg`` with ``defense.name`` (and the point's strength) set, validated."""
    out = copy.deepcopy(cfg)
    set_key(out, "defense.name", point.defense)
    if point.param is not None:
        set_key(out, f"defense.{point.param}", point.value)
    return out


def attack_observed(cfg: Config, run: FederatedRun, *, progress: bool = False) -> tuple[Score, torch.Tensor]:
    """Attack what the server observed of the victim at ``fl.attack_round``.

    The model is the global model of that round; the truth is the victim's samples (under secure
    aggregation: every sampled client's, since the attack sees only their aggregate). Returns
    ``(score, truth [N, C, H, W])``; ``score.matched`` is the matched reconstruction.
    """
    res = run.result
    model = copy.deepcopy(run.model)
    model.load_state_dict(res.attack_state)
    images, labels = dataset_tensors(run.train, res.observed_indices)
    sc = Scenario.from_config(cfg, model=model, data=run.train, victim=(images, labels))
    obs = sc.observe(res.observed, setup=res.observed_setup)
    return sc.score(sc.reconstruct(obs, progress=progress)), images


def best_tradeoff(rows: Sequence[dict[str, Any]], lpips_threshold: float) -> dict[str, str]:
    """Per defense, the row key of its best trade-off (paper Fig. 11): among settings that
    defend (LPIPS above the threshold) the smallest accuracy drop, else the largest LPIPS."""
    best: dict[str, str] = {}
    for name in dict.fromkeys(r["defense"] for r in rows):
        mine = [r for r in rows if r["defense"] == name and r.get("lpips") is not None]
        if not mine:
            continue
        safe = [r for r in mine if r["lpips"] > lpips_threshold]
        pick = (min(safe, key=lambda r: (r["accuracy_drop"] if r["accuracy_drop"] is not None
                                         else math.inf)) if safe
                else max(mine, key=lambda r: r["lpips"]))
        best[name] = pick["key"]
    return best


def run_privacy_utility(cfg: Config, out: str | Path, *, grid: Sequence[GridPoint],
                        progress: bool = False, save_checkpoints: bool = False,
                        log: Callable[[str], None] = lambda _m: None) -> PrivacyUtilityResult:
    """Run every grid point not yet in ``out/results.json`` and rewrite CSV, JSON and plot."""
    started = time.perf_counter()
    out = Path(out)
    if cfg.threat.malicious:
        raise GradleakError("privacy-utility models an honest-but-curious server; set "
                            "threat.malicious=false")
    configs = [point_config(cfg, p) for p in grid]  # validates every point before any training
    ThreatModel.from_config(cfg.threat).require(build_attack(cfg.attack).needs(),
                                                who=f"attack {cfg.attack.name!r}")

    json_path, csv_path, plot_path = (out / "results.json", out / "privacy_utility.csv",
                                      out / "privacy_utility.png")
    digest = cfg.digest()
    rows = _load_rows(json_path, digest)
    done = {r["key"] for r in rows}
    result = PrivacyUtilityResult(rows=rows, csv_path=csv_path, json_path=json_path,
                                  plot_path=plot_path)
    for i, (point, pcfg) in enumerate(zip(grid, configs, strict=True), 1):
        if point.key in done:
            result.skipped.append(point.key)
            log(f"[{i}/{len(grid)}] {point.key}: already done, skipped")
            continue
        log(f"[{i}/{len(grid)}] {point.key}")
        run_dir = out / "runs" / point.key
        fl_started = time.perf_counter()
        run = run_federated(pcfg, checkpoint_dir=run_dir if save_checkpoints else None,
                            progress=progress)
        fl_seconds = time.perf_counter() - fl_started
        attack_started = time.perf_counter()
        score, truth = attack_observed(pcfg, run, progress=progress)
        attack_seconds = time.perf_counter() - attack_started
        save_comparison(run_dir / "reconstruction.png", truth, score.matched)
        row = _row(point, run, score, fl_seconds, attack_seconds)
        rows.append(row)
        done.add(point.key)
        result.ran.append(point.key)
        _fill_drops(rows)
        _write_all(cfg, grid, rows, json_path, csv_path, plot_path)
        log(f"    accuracy={row['final_accuracy']:.3f} drop={_fmt(row['accuracy_drop'])} "
            f"psnr={row['psnr']:.2f} lpips={_fmt(row['lpips'])} "
            f"({fl_seconds:.1f} s training, {attack_seconds:.1f} s attack)")
    _fill_drops(rows)
    _write_all(cfg, grid, rows, json_path, csv_path, plot_path)
    result.rows = _ordered(rows, grid)
    result.seconds = time.perf_counter() - started
    return result


# --- rows, store and outputs ------------------------------------------------------------------


def _row(point: GridPoint, run: FederatedRun, score: Score, fl_seconds: float,
         attack_seconds: float) -> dict[str, Any]:
    res = run.result
    eps = list(res.epsilon.values())
    return {
        "key": point.key,
        "defense": point.defense,
        "param": point.param,
        "value": point.value,
        "final_accuracy": res.final_accuracy,
        "accuracy_drop": None,
        "accuracy_curve": res.accuracy,
        "psnr": score.psnr,
        "ssim": score.ssim,
        "lpips": score.lpips,
        "mse": score.mse,
        "brr": score.brr,
        "label_accuracy": score.label_accuracy,
        "leaked": (None if score.per_sample["leaked"] is None
                   else bool(any(score.per_sample["leaked"]))),
        "victim_epsilon": res.victim_epsilon,
        "max_epsilon": max(eps) if eps else None,
        "attack_round": res.attack_round,
        "observed_samples": res.observed.num_samples,
        "secure_aggregation": res.secure_aggregation,
        "fl_seconds": round(fl_seconds, 3),
        "attack_seconds": round(attack_seconds, 3),
    }


def _fill_drops(rows: list[dict[str, Any]]) -> None:
    """accuracy_drop = (accuracy without defense - accuracy) in percentage points."""
    base = next((r["final_accuracy"] for r in rows if r["defense"] == "none"), None)
    for r in rows:
        r["accuracy_drop"] = None if base is None else 100.0 * (base - r["final_accuracy"])


def _ordered(rows: list[dict[str, Any]], grid: Sequence[GridPoint]) -> list[dict[str, Any]]:
    rank = {p.key: i for i, p in enumerate(grid)}
    return sorted(rows, key=lambda r: (rank.get(r["key"], len(rank)), r["key"]))


def _load_rows(json_path: Path, digest: str) -> list[dict[str, Any]]:
    if not json_path.is_file():
        return []
    try:
        store = json.loads(json_path.read_text())
    except json.JSONDecodeError:
        raise GradleakError(f"{str(json_path)!r} is not valid JSON; move it away to start over") from None
    if store.get("config_digest") != digest:
        raise GradleakError(f"{str(json_path.parent)!r} holds privacy-utility results of another config "
                            f"(digest {store.get('config_digest')} != {digest}); use another --out")
    return list(store.get("rows", []))


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _write_all(cfg: Config, grid: Sequence[GridPoint], rows: list[dict[str, Any]], json_path: Path,
               csv_path: Path, plot_path: Path) -> None:
    rows_sorted = _ordered(rows, grid)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows_sorted:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    write_text(csv_path, buf.getvalue())
    thresholds = {"psnr": cfg.metrics.psnr_threshold, "lpips": cfg.metrics.lpips_threshold,
                  "accuracy_drop_points": ACCURACY_DROP_LINE}
    plot_privacy_utility(rows_sorted, plot_path, lpips_threshold=cfg.metrics.lpips_threshold)
    write_json(json_path, _clean({
        "experiment": "privacy_utility",
        "paper": "Sec. 6, Fig. 11, App. C iii",
        "config_digest": cfg.digest(),
        "config": cfg.to_dict(),
        "grid": [{"key": p.key, "defense": p.defense, "param": p.param, "value": p.value}
                 for p in grid],
        "thresholds": thresholds,
        "best": best_tradeoff(rows_sorted, cfg.metrics.lpips_threshold),
        "rows": rows_sorted,
        "versions": versions(),
        "git_commit": git_commit(),
    }))


def plot_privacy_utility(rows: Sequence[dict[str, Any]], path: str | Path, *,
                         lpips_threshold: float = 0.1,
                         drop_line: float = ACCURACY_DROP_LINE) -> None:
    """Scatter of LPIPS (x) against accuracy drop in points (y), one colour per defense; the best
    trade-off per defense is circled. Rows without LPIPS or accuracy drop are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = set(best_tradeoff(rows, lpips_threshold).values())
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    colours = plt.get_cmap("tab10")
    names = list(dict.fromkeys(r["defense"] for r in rows))
    for i, name in enumerate(names):
        pts = [r for r in rows if r["defense"] == name and r.get("lpips") is not None
               and r.get("accuracy_drop") is not None]
        if not pts:
            continue
        xs, ys = [r["lpips"] for r in pts], [r["accuracy_drop"] for r in pts]
        ax.scatter(xs, ys, color=colours(i % 10), label=name, s=36, zorder=3)
        for r in pts:
            if r["value"] is not None:
                ax.annotate(f"{r['value']:g}", (r["lpips"], r["accuracy_drop"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
            if r["key"] in best:
                ax.scatter([r["lpips"]], [r["accuracy_drop"]], s=150, facecolors="none",
                           edgecolors=colours(i % 10), linewidths=1.2, zorder=2)
    ax.axhline(drop_line, color="tab:blue", linestyle="--", linewidth=1,
               label=f"accuracy drop {drop_line:g} points")
    ax.axvline(lpips_threshold, color="tab:red", linestyle="--", linewidth=1,
               label=f"LPIPS leakage threshold {lpips_threshold:g}")
    ax.set_xlabel("LPIPS of the attack's reconstruction (higher = more private)")
    ax.set_ylabel("test accuracy drop vs no defense (points)")
    ax.set_title("Privacy-utility trade-off of post-processing defenses")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    try:
        atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    finally:
        plt.close(fig)
