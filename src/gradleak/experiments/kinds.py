"""How one run of an experiment executes, by kind, and the worker entry point :func:`execute`.

A kind is ``fn(cfg, ctx, options) -> dict`` returning the run's metrics (flat, JSON-ready) and
optionally ``"_result"`` (extra JSON kept in the store). Kinds register with
``@register_kind(name)``:

* ``attack``: :func:`gradleak.runner.run_scenario` (one client, one update, one attack);
  option ``igsa: true`` adds the IGSA of the attacked model at the victim's samples.
* ``stage``: the paper's Fig. 7: FL training (cached, shared by every round of one model), then
  accuracy, IGSA and the attack against the global model of round ``run.round``.
* ``privacy_utility``: the paper's Fig. 11 / Tab. 6: FL training with every client applying
  the scenario's defense (final accuracy), then the attack on the victim's observed update.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradleak.errors import GradleakError
from gradleak.registry import Registry

KINDS: Registry = Registry("experiment kind")
METRIC_KEYS = ("psnr", "ssim", "lpips", "mse", "brr", "wsrr", "label_accuracy")


def register_kind(name: str) -> Callable:
    return KINDS.register(name)


@dataclass
class RunContext:
    """Where a run writes: its own folder, and the sweep's shared artifact cache."""

    run_dir: Path
    cache: Path


def _flat_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in METRIC_KEYS}


def _victim_and_model(cfg: Any) -> tuple[Any, Any, Any]:
    """The victim's samples and the model exactly as :func:`run_scenario` builds them."""
    from gradleak.data import build_dataset
    from gradleak.data.sampling import select_victim_samples
    from gradleak.models import build_model
    from gradleak.provenance import seed_everything

    seed_everything(cfg.seed)
    dataset = build_dataset(cfg.data)
    images, labels, _ = select_victim_samples(dataset, cfg.data, seed=cfg.seed)
    model = build_model(cfg.model, num_classes=dataset.num_classes, channels=dataset.channels,
                        resolution=dataset.resolution, mean=dataset.mean, std=dataset.std)
    return images, labels, model


def _igsa(cfg: Any, points: int) -> float:
    from gradleak.analysis.igsa import igsa

    images, labels, model = _victim_and_model(cfg)
    return igsa(model, images, labels, num_points=points, seed=cfg.seed).value


@register_kind("attack")
def run_attack(cfg: Any, ctx: RunContext, options: dict[str, Any]) -> dict[str, Any]:
    from gradleak.runner import run_scenario, write_run

    out: dict[str, Any] = {}
    if options.get("igsa"):
        out["igsa"] = _igsa(cfg, int(options.get("igsa_points", 4)))
    run = run_scenario(cfg)
    write_run(ctx.run_dir, run)
    res = run.result
    out.update(_flat_metrics(res["metrics"]))
    out.update(attack_seconds=res["attack_seconds"], iterations=res["iterations"],
               model_parameters=res["scenario"]["model_parameters"],
               local_updates=res["scenario"]["local_updates"])
    out["_result"] = {k: res[k] for k in ("per_sample", "labels", "thresholds", "warnings",
                                          "scenario", "versions", "git_commit", "attack_losses")}
    return out


@register_kind("stage")
def run_stage(cfg: Any, ctx: RunContext, options: dict[str, Any]) -> dict[str, Any]:
    from gradleak.analysis.igsa import igsa
    from gradleak.config import load_config
    from gradleak.experiments.artifacts import ensure_federated
    from gradleak.runner import run_scenario, write_run

    if "round" not in options:
        raise GradleakError("kind 'stage' needs a run.round grid axis (the FL round to attack)")
    r = int(options["round"])
    if not 0 <= r <= cfg.fl.rounds:
        raise GradleakError(f"bad run.round={r}: must be in 0..fl.rounds={cfg.fl.rounds}")
    folder, accuracy = ensure_federated(cfg, ctx.cache)
    tree = cfg.to_dict()
    tree["model"]["checkpoint"] = str(folder / f"round_{r:03d}.pt")
    # The victim trains like every client; its mini-batch is capped at its own N.
    batch = tree["client"]["batch_size"]
    tree["client"]["batch_size"] = None if batch is None else min(batch, cfg.data.num_samples)
    round_cfg = load_config(base=tree)
    images, labels, model = _victim_and_model(round_cfg)
    smooth = igsa(model, images, labels, num_points=int(options.get("igsa_points", 4)),
                  seed=cfg.seed).value
    run = run_scenario(round_cfg)
    write_run(ctx.run_dir, run)
    res = run.result
    return {**_flat_metrics(res["metrics"]), "accuracy": accuracy[r], "igsa": smooth,
            "attack_seconds": res["attack_seconds"],
            "_result": {k: res[k] for k in ("per_sample", "warnings", "git_commit")}}


@register_kind("privacy_utility")
def run_privacy_utility(cfg: Any, ctx: RunContext, options: dict[str, Any]) -> dict[str, Any]:
    from gradleak.experiments.privacy_utility import attack_observed
    from gradleak.fl.server import run_federated
    from gradleak.report.images import save_comparison

    started = time.perf_counter()
    fed = run_federated(cfg)
    fl_seconds = time.perf_counter() - started
    started = time.perf_counter()
    scores, truth, matched = attack_observed(cfg, fed)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    save_comparison(ctx.run_dir / "reconstruction.png", truth, matched)
    out = _flat_metrics(scores)
    out.update(final_accuracy=fed.result.final_accuracy, victim_epsilon=fed.result.victim_epsilon,
               fl_seconds=round(fl_seconds, 3),
               attack_seconds=round(time.perf_counter() - started, 3))
    out["_result"] = {"per_sample": scores["per_sample"], "warnings": scores["warnings"],
                      "accuracy": list(fed.result.accuracy)}
    return out


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, GradleakError):
        return str(exc)
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def execute(run: dict[str, Any], out: str, *, profile: str, threads: int = 1) -> dict[str, Any]:
    """Execute one run (a :meth:`RunSpec.to_dict`) and return its store row; never raises for a
    failing run: the row then has ``status='failed'`` and the error."""
    import torch

    from gradleak.config import flatten
    from gradleak.experiments.artifacts import ensure_generator
    from gradleak.experiments.spec import RunSpec
    from gradleak.io import write_json

    torch.set_num_threads(max(1, threads))
    spec = RunSpec(run["experiment"], run["kind"], run["variant"], run["labels"],
                   run["overrides"], run["options"], run["seed"], run.get("prepare") or {})
    out_path = Path(out)
    ctx = RunContext(run_dir=out_path / "runs" / spec.run_id, cache=out_path / "cache")
    row: dict[str, Any] = {"run_id": spec.run_id, "experiment": spec.experiment,
                           "profile": profile, "kind": spec.kind, "variant": spec.variant,
                           "seed": spec.seed, "labels": spec.labels,
                           "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "worker": f"{socket.gethostname()}:{os.getpid()}"}
    started = time.perf_counter()
    try:
        unresolved = spec.config(resolve=None)
        row["config_hash"] = unresolved.digest()
        row.update(flatten(unresolved.to_dict()))
        row.update({f"run.{k}": v for k, v in spec.options.items()})
        resolution = unresolved.data.resolution
        resolved = {n: str(ensure_generator(n, p, ctx.cache, resolution=resolution))
                    for n, p in sorted(spec.prepare.items())}
        cfg = spec.config(resolve=resolved)
        with warnings.catch_warnings(record=True) as caught:  # kept in the row, not printed
            warnings.simplefilter("always")
            metrics = KINDS.get(spec.kind)(cfg, ctx, spec.options)
        extra = metrics.pop("_result", {})
        extra["warnings"] = sorted({str(w.message) for w in caught} | set(extra.get("warnings", [])))
        row.update(metrics)
        row["status"], row["error"] = "ok", None
        row["result"] = {"metrics": metrics, **extra, "resolved_config": cfg.to_dict()}
        write_json(ctx.run_dir / "row.json", {k: v for k, v in row.items() if k != "result"})
    except Exception as exc:  # a failing run is recorded, the sweep goes on
        row["status"], row["error"] = "failed", _error_text(exc)
        row["result"] = {"traceback": traceback.format_exc()[-4000:]}
    row["seconds"] = round(time.perf_counter() - started, 3)
    return row
