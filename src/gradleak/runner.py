"""One scenario end to end: ``run_scenario(cfg)`` and ``write_run`` to store its outputs atomically.

The pipeline itself is :class:`gradleak.scenario.Scenario`; this module keeps the documented entry
points (``run_scenario``, ``write_run``, ``RunOutput``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from gradleak.config import Config
from gradleak.errors import GradleakError
from gradleak.images import save_comparison
from gradleak.io import atomic_write, write_json, write_text
from gradleak.scenario import RunOutput, Scenario, resolve_device
from gradleak.text_view import render_html, render_markdown

__all__ = ["RunOutput", "resolve_device", "run_scenario", "write_run"]


def run_scenario(cfg: Config, *, progress: bool = False) -> RunOutput:
    """Run one single-client scenario and score it against the ground truth. Here the victim is
    the only client, so a FedAvg batch size above its N is a mistake and is refused (in FL runs
    each client's batch is capped at its own N instead, :meth:`ClientSetup.from_config`)."""
    n = len(cfg.data.indices) if cfg.data.indices else cfg.data.num_samples
    if cfg.client.protocol == "fedavg" and (cfg.client.batch_size or n) > n:
        raise GradleakError(f"bad value {cfg.client.batch_size} for client.batch_size: must be "
                            f"<= data.num_samples={n}")
    return Scenario.from_config(cfg).run(progress=progress)


def write_run(out: str | Path, run: RunOutput) -> Path:
    """Write ``config.yaml``, ``reconstruction.png`` (text: ``reconstruction.md`` and
    ``reconstruction.html``) and, last, ``result.json`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", yaml.safe_dump(run.result["config"], sort_keys=False))
    if "text" in run.result:
        write_text(out / "reconstruction.md", render_markdown(run.result))
        write_text(out / "reconstruction.html", render_html(run.result))
    else:
        save_comparison(out / "reconstruction.png", run.truth, run.matched)
    tensors = {"truth": run.truth, "reconstruction": run.matched,
               "candidates": run.reconstruction.candidates}
    atomic_write(out / "tensors.pt", lambda p: torch.save(tensors, p))  # unique temp name
    write_json(out / "result.json", run.result)
    return out / "result.json"
