"""The store row: one builder for every writer (sweep workers, the Flower audit strategy).

A row is flat and JSON-ready: the run's identity (id, experiment, kind, variant, seed, grid
labels), when and where it ran, the config's digest and every dotted config key (so reports
query rows by setting), then whatever the writer measured."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from gradleak.config import Config, flatten


def row_header(*, run_id: str, experiment: str, kind: str, variant: str, seed: int,
               labels: dict[str, Any], profile: str | None = None) -> dict[str, Any]:
    """The identity part of a row, stamped with its start time and the writing process."""
    row: dict[str, Any] = {"run_id": run_id, "experiment": experiment}
    if profile is not None:
        row["profile"] = profile
    row.update(kind=kind, variant=variant, seed=seed, labels=labels,
               started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               worker=f"{socket.gethostname()}:{os.getpid()}")
    return row


def config_columns(cfg: Config, *, keys: bool = True) -> dict[str, Any]:
    """``config_hash`` and, with ``keys``, one column per dotted config key."""
    out: dict[str, Any] = {"config_hash": cfg.digest()}
    if keys:
        out.update(flatten(cfg.to_dict()))
    return out
