"""Reconstruction error against the number of local updates U (the paper's Thm. 4.2), as a sweep.

The client runs U = E full-batch SGD steps (FedAvg, B = N) on the fully connected scenario of
:data:`gradleak.analysis.theory.MLP_SCENARIO`; the server inverts the model difference as if it
were one gradient (``W_U - W_0 ~ -U lr grad``). With N >= 2 samples the redundant terms of
Eq. (9) -- gradients taken at the drifted weights -- grow with U, and so does the error. ``ig``
(GIA-O, gradient matching only, one-step approximation) shows it cleanly (MLP, 16 px, N = 2,
lr 0.1, 3 seeds: MSE 9e-5 at U = 1, 1.7e-3 at U = 2, 4.6e-3 at U = 8); ``analytic`` already
mixes the samples at U = 1 (MSE 0.026) and degrades less (0.033 at U = 8).

One :class:`~gradleak.runs.spec.Experiment`: a variant per attack, the grid axis
``client.local_epochs`` (= U) and the seeds, each run of kind ``attack``. Runs are stored in
``out/results.sqlite`` as they finish, so a rerun skips them and an interrupted sweep keeps
them; ``theory.csv`` (:data:`CSV_COLUMNS`, matched MSE / PSNR averaged over the seeds) and
``theory.png`` are rendered from the stored rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gradleak.analysis.theory import MLP_SCENARIO
from gradleak.config import parse_override
from gradleak.errors import GradleakError
from gradleak.io import atomic_write, write_text
from gradleak.runs.spec import Experiment, Plan

EXPERIMENT = "theory_local_updates"
AXIS = "client.local_epochs"
ATTACK_SETTINGS: dict[str, list[str]] = {
    "analytic": ["attack.name=analytic"],
    # GIA-O with gradient matching only (the paper's Sec. 5 baseline); the server approximates
    # the U-step update by one gradient (BST: it does not know the client's training details).
    "ig": ["attack.name=ig", "attack.tv=0", "threat.knows_client_config=false"],
}
CSV_COLUMNS = ("attack", "U", "mse", "psnr", "mse_std", "psnr_std", "seeds")


@dataclass
class LocalUpdatesResult:
    """The aggregated rows (one per attack and U) and what the sweep did."""

    rows: list[dict[str, Any]]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    csv_path: Path | None = None
    plot_path: Path | None = None


def local_updates_plan(updates: Sequence[int] = tuple(range(1, 9)), *,
                       attacks: Sequence[str] = ("ig",), samples: int = 2, lr: float = 0.1,
                       seeds: Sequence[int] = (0,), iterations: int = 200,
                       overrides: Sequence[str] = ()) -> Plan:
    """Thm. 4.2 as a sweep :class:`Plan` of kind ``attack``: variants = ``attacks``
    (``analytic``, ``ig`` with ``iterations`` steps), grid ``client.local_epochs`` = ``updates``,
    ``seeds``; ``overrides`` (``key=value``, what the user typed) win over everything."""
    unknown = [a for a in attacks if a not in ATTACK_SETTINGS]
    if unknown or not attacks:
        raise GradleakError(f"unknown theory attack {', '.join(map(repr, unknown)) or 'none'}; "
                            f"allowed: {', '.join(ATTACK_SETTINGS)}")
    if not updates or min(updates) < 1:
        raise GradleakError(f"bad local updates {list(updates)}: need values >= 1")
    common = [f"attack.iterations={iterations}", f"data.num_samples={samples}",
              "client.protocol=fedavg", f"client.batch_size={samples}", f"client.lr={lr}"]
    variants = {a: dict(map(parse_override, [*MLP_SCENARIO, *ATTACK_SETTINGS[a], *common]))
                for a in attacks}
    spec = {"title": "reconstruction error vs local updates (Thm. 4.2)", "kind": "attack",
            "variants": variants, "grid": {AXIS: [int(u) for u in updates]},
            "seeds": [int(s) for s in seeds]}
    exp = Experiment(name=EXPERIMENT, title=spec["title"], kind="attack", spec=spec,
                     tests="reconstruction error grows with the local updates U",
                     insight="Thm. 4.2: the one-step approximation of U local steps degrades")
    return Plan(exp, "paper", exp.validate("paper", dict(map(parse_override, overrides))),
                overrides=dict(map(parse_override, overrides)))


def run_local_updates(out: str | Path, updates: Sequence[int] = tuple(range(1, 9)), *,
                      attacks: Sequence[str] = ("ig",), samples: int = 2, lr: float = 0.1,
                      seeds: Sequence[int] = (0,), iterations: int = 200,
                      overrides: Sequence[str] = (), progress: bool = False,
                      log: Callable[[str], None] = lambda _m: None) -> LocalUpdatesResult:
    """Run (or resume) :func:`local_updates_plan` into ``out`` and write ``theory.csv`` and
    ``theory.png`` from the stored rows. Raises when a run failed (its error is in the store)."""
    from gradleak.runs.sweep import run_sweep

    out = Path(out)
    plan = local_updates_plan(updates, attacks=attacks, samples=samples, lr=lr, seeds=seeds,
                              iterations=iterations, overrides=overrides)
    swept = run_sweep(plan, out, progress=progress, log=log)
    if swept.failed:
        first = next(iter(swept.failed.values()))
        raise GradleakError(f"{len(swept.failed)} local-updates runs failed (kept in "
                            f"{out / 'results.sqlite'}), e.g.: {first}")
    rows = stored_rows(out, plan)
    for r in rows:
        log(f"{r['attack']} U={r['U']}: mse={r['mse']:.5f} psnr={r['psnr']:.2f} dB")
    write_local_updates_csv(out / "theory.csv", rows)
    plot_local_updates(out / "theory.png", rows)
    return LocalUpdatesResult(rows=rows, ran=list(swept.ok), skipped=list(swept.skipped),
                              csv_path=out / "theory.csv", plot_path=out / "theory.png")


def stored_rows(out: str | Path, plan: Plan) -> list[dict[str, Any]]:
    """The plan's stored runs as one row per (attack, U), in plan order: ``CSV_COLUMNS`` with
    the means and population std over the seeds stored so far (points without any are left out)."""
    from gradleak.runs.store import ResultStore

    with ResultStore(out) as store:
        stored = {r["run_id"]: r for r in store.rows(experiment=EXPERIMENT, status="ok")}
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in plan.runs:
        group = groups.setdefault((run.variant, int(run.labels[AXIS])), [])
        if run.run_id in stored and all(run.run_id != g["run_id"] for g in group):
            group.append(stored[run.run_id])
    return [_aggregate(attack, found) for (attack, _u), found in groups.items() if found]


def _aggregate(attack: str, found: list[dict[str, Any]]) -> dict[str, Any]:
    mse = torch.tensor([float(r["mse"]) for r in found], dtype=torch.float64)
    psnr = torch.tensor([float(r["psnr"]) for r in found], dtype=torch.float64)
    return {"attack": attack, "U": int(found[0]["local_updates"]), "mse": float(mse.mean()),
            "psnr": float(psnr.mean()), "mse_std": float(mse.std(unbiased=False)),
            "psnr_std": float(psnr.std(unbiased=False)), "seeds": len(found)}


def write_local_updates_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """One line per (attack, U) with :data:`CSV_COLUMNS`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def plot_local_updates(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Reconstruction MSE against U, one line per attack (Thm. 4.2). MSE rather than the mean
    per-sample PSNR: one exactly recovered sample (PSNR capped at 100 dB) would dominate that."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for attack in dict.fromkeys(r["attack"] for r in rows):
        sel = [r for r in rows if r["attack"] == attack]
        ax.errorbar([r["U"] for r in sel], [r["mse"] for r in sel], yerr=[r["mse_std"] for r in sel],
                    marker="o", capsize=3, label=attack)
    ax.set(xlabel="local updates U", ylabel="reconstruction MSE",
           title="reconstruction error vs local updates (Thm. 4.2)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)
