"""Training-stage study (the paper's Sec. 5.1.2, Fig. 7): vulnerability along FL training.

Train the global model with FedAvg for ``fl.rounds`` rounds (per-round checkpoints), then every
``every`` rounds record the test accuracy, the IGSA of the model around the fixed victim samples
and the attack's metrics on that victim's update against that round's model. Output: one CSV row
per recorded round and a three-panel plot (accuracy, normalised IGSA, PSNR). Expected shape: the
attack succeeds early and fails once the model fits. Rows already in the CSV are not redone.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from gradleak.analysis.igsa import igsa, normalise_stages  # noqa: E402
from gradleak.config import Config, load_config  # noqa: E402
from gradleak.errors import GradleakError  # noqa: E402
from gradleak.fl.server import run_federated  # noqa: E402
from gradleak.io import atomic_write, write_text  # noqa: E402
from gradleak.scenario import Scenario  # noqa: E402

FIELDS = ["round", "accuracy", "igsa", "igsa_normalised", "psnr", "ssim", "lpips", "mse"]


def _read_rows(path: Path) -> dict[int, dict[str, Any]]:
    if not path.is_file():
        return {}
    with path.open() as f:
        return {int(r["round"]): r for r in csv.DictReader(f)}


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def stage_study(cfg: Config, out: str | Path, *, every: int = 1, igsa_points: int = 8,
                progress: bool = False) -> list[dict[str, Any]]:
    """Run the study for ``cfg`` into ``out``; returns the rows (``FIELDS``), first round first."""
    if every < 1:
        raise GradleakError(f"bad value {every} for --every: must be >= 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    rounds = list(range(0, cfg.fl.rounds + 1, every))
    if rounds[-1] != cfg.fl.rounds:
        rounds.append(cfg.fl.rounds)
    have = list(ckpt_dir.glob("round_*.pt"))
    if len(have) < cfg.fl.rounds + 1:
        fed = run_federated(cfg, checkpoint_dir=ckpt_dir, progress=progress)
        accuracy = fed.result.accuracy
        write_text(out / "accuracy.csv", "round,accuracy\n" + "".join(
            f"{r},{a}\n" for r, a in enumerate(accuracy)))
    else:
        with (out / "accuracy.csv").open() as f:
            accuracy = [float(r["accuracy"]) for r in csv.DictReader(f)]

    done = _read_rows(out / "stage_study.csv")
    rows: list[dict[str, Any]] = []
    for r in tqdm(rounds, desc="stage study", unit="round", disable=not progress):
        if r in done:
            rows.append({k: float(v) if k != "round" else int(v) for k, v in done[r].items()
                         if k in FIELDS and v not in ("", "None")})
            continue
        tree = cfg.to_dict()
        tree["model"]["checkpoint"] = str(ckpt_dir / f"round_{r:03d}.pt")
        sc = Scenario.from_config(load_config(base=tree))
        smoothness = igsa(sc.model, sc.images, sc.labels, num_points=igsa_points, seed=cfg.seed).value
        metrics = sc.run().result["metrics"]
        rows.append({"round": r, "accuracy": accuracy[r], "igsa": smoothness,
                     "psnr": metrics["psnr"], "ssim": metrics["ssim"], "lpips": metrics["lpips"],
                     "mse": metrics["mse"]})
        _write_csv(out / "stage_study.csv", _with_norm(rows))  # progress survives interruption
    rows = _with_norm(rows)
    _write_csv(out / "stage_study.csv", rows)
    plot_stage_study(rows, out / "stage_study.png", title=cfg.model.name)
    return rows


def _with_norm(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    norm = normalise_stages([float(r["igsa"]) for r in rows])
    return [r | {"igsa_normalised": n} for r, n in zip(rows, norm, strict=True)]


def plot_stage_study(rows: list[dict[str, Any]], path: Path, *, title: str) -> None:
    """Three panels over rounds: test accuracy, normalised IGSA, attack PSNR (Fig. 7)."""
    rounds = [r["round"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, label in zip(axes, ("accuracy", "igsa_normalised", "psnr"),
                              ("test accuracy", "IGSA (normalised)", "attack PSNR (dB)"),
                              strict=True):
        ax.plot(rounds, [float(r[key]) for r in rows], marker="o")
        ax.set_xlabel("FL round")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"training-stage study: {title}")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
