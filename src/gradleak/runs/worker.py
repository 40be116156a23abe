"""The worker entry point of a sweep: :func:`execute` runs one :class:`RunSpec` by its kind and
returns its store row (a failing run becomes a ``failed`` row, never an exception)."""

from __future__ import annotations

import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradleak.errors import GradleakError
from gradleak.plugins import load_plugins
from gradleak.runs.kinds import KINDS, RunContext
from gradleak.runs.rows import config_columns, row_header


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, GradleakError):
        return str(exc)
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def execute(run: dict[str, Any], out: str, *, profile: str, threads: int = 1,
            plugins: Sequence[str] = ()) -> dict[str, Any]:
    """Execute one run (a :meth:`RunSpec.to_dict`) and return its store row; never raises for a
    failing run: the row then has ``status='failed'`` and the error. ``plugins``: the driver's
    plug-ins, imported here first (a spawned process or a Ray task starts without them)."""
    import torch

    from gradleak.io import write_json
    from gradleak.runs.artifacts import ensure_prepared
    from gradleak.runs.spec import RunSpec

    torch.set_num_threads(max(1, threads))
    spec = RunSpec.from_dict(run)
    out_path = Path(out)
    ctx = RunContext(run_dir=out_path / "runs" / spec.run_id, cache=out_path / "cache")
    row = row_header(run_id=spec.run_id, experiment=spec.experiment, profile=profile,
                     kind=spec.kind, variant=spec.variant, seed=spec.seed, labels=spec.labels)
    started = time.perf_counter()
    try:
        load_plugins(plugins)
        unresolved = spec.config(resolve=None)
        row.update(config_columns(unresolved))
        row.update({f"run.{k}": v for k, v in spec.options.items()})
        resolution = unresolved.data.resolution
        resolved = {n: str(ensure_prepared(n, p, ctx.cache, resolution=resolution,
                                            device=unresolved.device))
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
