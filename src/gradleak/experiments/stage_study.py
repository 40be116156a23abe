"""Training-stage study (the paper's Sec. 5.1.2, Fig. 7): vulnerability along FL training.

A preset over the one experiment pipeline: a sweep of kind ``stage`` (see
:mod:`gradleak.runs.kinds`) over the rounds ``0, every, 2 * every, ..., fl.rounds``. The
FL system of ``cfg`` is trained once with FedAvg (per-round checkpoints, cached in
``out/cache``); each run records, at its round, the test accuracy, the IGSA of the global model
around the fixed victim samples and the attack's metrics on that victim's update. Runs are stored
in ``out/results.sqlite`` as they finish (a rerun skips them); ``stage_study.csv`` (one row per
recorded round) and ``accuracy.csv`` (every round) are rewritten from the store. Expected shape:
the attack succeeds early and fails once the model fits. The three-panel figure is
:func:`gradleak.report.plots.stage_figure`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gradleak.analysis.igsa import normalise_stages
from gradleak.config import Config, flatten
from gradleak.errors import GradleakError
from gradleak.io import write_text
from gradleak.runs.spec import Experiment, Plan

EXPERIMENT = "stage_study"
FIELDS = ["round", "accuracy", "igsa", "igsa_normalised", "psnr", "ssim", "lpips", "mse"]


def stage_rounds(rounds: int, every: int) -> list[int]:
    """``0, every, 2 * every, ...`` and always the last round."""
    if every < 1:
        raise GradleakError(f"bad value {every} for --every: must be >= 1")
    out = list(range(0, rounds + 1, every))
    return out if out[-1] == rounds else [*out, rounds]


def stage_plan(cfg: Config, *, every: int = 1, igsa_points: int = 8) -> Plan:
    """The study as a sweep :class:`Plan` (kind ``stage``, grid ``run.round``)."""
    if igsa_points < 1:
        raise GradleakError(f"bad value {igsa_points} for --igsa-points: must be >= 1")
    base = {k: v for k, v in flatten(cfg.to_dict()) if k != "seed"}
    spec = {"title": "training-stage study (Fig. 7)", "kind": "stage", "base": base,
            "grid": {"run.round": stage_rounds(cfg.fl.rounds, every)}, "seeds": [cfg.seed],
            "options": {"igsa_points": igsa_points}}
    exp = Experiment(name=EXPERIMENT, title=spec["title"], tests="", insight="", kind="stage",
                     spec=spec)
    return Plan(exp, "paper", exp.validate("paper"))


def stage_study(cfg: Config, out: str | Path, *, every: int = 1, igsa_points: int = 8,
                progress: bool = False,
                log: Callable[[str], None] = lambda _m: None) -> list[dict[str, Any]]:
    """Run (or resume) the study of ``cfg`` into ``out``; returns the rows (``FIELDS``), first
    round first. Raises when a run failed (its error is in the store)."""
    from gradleak.runs.artifacts import ensure_federated
    from gradleak.runs.store import ResultStore
    from gradleak.runs.sweep import run_sweep

    out = Path(out)
    plan = stage_plan(cfg, every=every, igsa_points=igsa_points)
    swept = run_sweep(plan, out, progress=progress, log=log)
    if swept.failed:
        first = next(iter(swept.failed.values()))
        raise GradleakError(f"{len(swept.failed)} stage-study runs failed, e.g.: {first}")
    wanted = {r.run_id for r in plan.runs}
    with ResultStore(out) as store:
        stored = [r for r in store.rows(experiment=EXPERIMENT, status="ok") if r["run_id"] in wanted]
    rows = sorted(({"round": int(r["run.round"]), **{k: r.get(k) for k in FIELDS[1:]}}
                   for r in stored), key=lambda r: r["round"])
    norm = normalise_stages([float(r["igsa"]) for r in rows])
    rows = [r | {"igsa_normalised": n} for r, n in zip(rows, norm, strict=True)]
    _write_csv(out / "stage_study.csv", rows)
    _, accuracy = ensure_federated(plan.runs[0].config(resolve={}), out / "cache")  # cached
    write_text(out / "accuracy.csv", "round,accuracy\n" + "".join(
        f"{r},{a}\n" for r, a in enumerate(accuracy)))
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())
