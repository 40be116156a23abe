"""Where the audit strategy writes: ``<out>/results.sqlite`` (gradleak's result store, one row per
audited client and round, and one per client guard report) and ``<out>/<run>/round_RRRR/<who>.png``
images, each written atomically (``<run>`` tags one Flower run, so runs never overwrite each other)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from gradleak.config import Config
from gradleak.images import save_reconstruction  # noqa: F401 (re-exported)
from gradleak.io import atomic_write
from gradleak.runs.rows import config_columns, row_header
from gradleak.runs.store import ResultStore

EXPERIMENT = "flower-audit"


def save_sentences(path: Path, text: str) -> None:
    atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))


class AuditWriter:
    """Stores one audited update per call of :meth:`put`."""

    def __init__(self, out: str | Path, cfg: Config) -> None:
        self.out = Path(out)
        self.cfg = cfg
        self.store = ResultStore(self.out)
        # One Flower run = one tag: a second run into the same folder adds rows, never replaces.
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{id(self) % 10000:04d}"

    def image_path(self, server_round: int, who: str) -> Path:
        return self.out / self.run / f"round_{server_round:04d}" / f"{who}.png"

    def put(self, *, server_round: int, who: str, result: dict[str, Any], status: str = "ok",
            error: str | None = None, seconds: float = 0.0, kind: str = "flower-audit",
            columns: dict[str, Any] | None = None,
            recon: torch.Tensor | None = None, truth: torch.Tensor | None = None,
            text: str | None = None) -> str | None:
        """Write the image (if any) or the sentences (``text``, a text model's reconstruction),
        then the row that points to it. ``kind``: ``flower-audit`` (the server's own attack) or
        ``flower-guard`` (what a client's guard reported); ``columns``: extra queryable columns.
        Returns the file's path relative to the output folder (None: no file)."""
        row = row_header(run_id=f"{EXPERIMENT}/{self.run}/round{server_round:04d}/{who}",
                         experiment=EXPERIMENT, kind=kind, variant=who, seed=self.cfg.seed,
                         labels={"round": server_round, "client": who})
        row.update(config_columns(self.cfg, keys=False), flower_run=self.run, status=status,
                   error=error, seconds=round(seconds, 3), round=server_round, client=who,
                   result=result)
        if recon is not None:
            path = self.image_path(server_round, who)
            save_reconstruction(path, recon, truth)
            row["image"] = str(path.relative_to(self.out))
        if text is not None:
            path = self.image_path(server_round, who).with_suffix(".txt")
            save_sentences(path, text)
            row["text_file"] = str(path.relative_to(self.out))
        for key in ("attack_loss", "num_samples", "psnr", "ssim", "lpips", "brr", "leak_rate",
                    "label_accuracy", "rouge1", "rouge2", "token_accuracy", "semantic"):
            if result.get(key) is not None:
                row[key] = result[key]
        row.update(columns or {})
        self.store.put(row)
        return row.get("image") or row.get("text_file")

    def close(self) -> None:
        self.store.close()
