"""Run an experiment's grid and store every finished run at once (resumable).

Executors:

* ``local``: ``jobs=1`` runs in this process; ``jobs=N`` in N spawned worker processes, each with
  ``cores // N`` torch threads (oversubscribed OpenMP threads stall on small CPUs).
* ``ray``: one Ray task per run on the cluster at ``address`` (else ``$RAY_ADDRESS``, else a
  local Ray instance), ``num_cpus`` = threads per task, ``num_gpus`` = ``gpus_per_task``. The
  sweep folder must be on storage every node sees (runs write their images and share cached
  artifacts there).

Either way the main process is the store's only writer: it inserts each row as its run
returns, so killing the sweep loses only the runs in flight, and a rerun skips every run whose
row says ``ok``. Failed runs are stored with their error and retried on the next invocation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

from gradleak import plugins
from gradleak.errors import GradleakError
from gradleak.experiments.spec import Plan, RunSpec
from gradleak.experiments.store import ResultStore
from gradleak.experiments.worker import execute
from gradleak.io import write_text
from gradleak.provenance import git_commit, versions

EXECUTORS = ("local", "ray")


@dataclass
class SweepResult:
    total: int
    skipped: list[str] = field(default_factory=list)  # already stored as ok
    ok: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # run id -> error


def threads_per_worker(jobs: int, cores: int | None = None) -> int:
    """``cores // jobs`` torch threads per worker, capped by ``$OMP_NUM_THREADS`` when set."""
    threads = max(1, (cores or os.cpu_count() or 1) // max(1, jobs))
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(threads, int(cap)) if cap.isdigit() and int(cap) > 0 else threads


def save_plan(plan: Plan, out: Path) -> Path:
    """Write the resolved plan (every run, the settings, provenance) next to the store."""
    data = plan.to_dict()
    data["provenance"] = {"git_commit": git_commit(), "versions": versions()}
    path = out / "plans" / f"{plan.experiment.name}-{plan.profile}.yaml"
    plain = json.loads(json.dumps(data, default=str))  # version objects -> strings
    write_text(path, yaml.safe_dump(plain, sort_keys=False))
    return path


def _local(todo: list[RunSpec], out: str, kwargs: dict[str, Any], jobs: int,
           threads: int) -> Iterator[dict[str, Any]]:
    if jobs == 1:
        for run in todo:
            yield execute(run.to_dict(), out, threads=threads, **kwargs)
        return
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the spawned workers
    try:
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"))
        pending = {pool.submit(execute, run.to_dict(), out, threads=threads, **kwargs): run
                   for run in todo}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    run = pending.pop(fut)
                    exc = fut.exception()
                    yield fut.result() if exc is None else _crashed(run, kwargs["profile"], exc)
        finally:  # on interruption, do not wait for the queued runs
            pool.shutdown(wait=False, cancel_futures=True)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


def _crashed(run: RunSpec, profile: str, exc: BaseException) -> dict[str, Any]:
    """The row of a run whose worker died (out of memory, killed): recorded, retried later."""
    return {"run_id": run.run_id, "experiment": run.experiment, "profile": profile,
            "kind": run.kind, "variant": run.variant, "seed": run.seed, "labels": run.labels,
            "status": "failed", "error": f"worker crashed: {type(exc).__name__}: {exc}"}


def _ray(todo: list[RunSpec], out: str, kwargs: dict[str, Any], threads: int,
         address: str | None, gpus: float) -> Iterator[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise GradleakError("--executor ray needs the ray package: pip install 'ray>=2.9'") from None
    address = address or os.environ.get("RAY_ADDRESS")
    started_here = not ray.is_initialized()
    if started_here:
        env = {"env_vars": {"OMP_NUM_THREADS": str(threads)}}
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=False)
        else:
            # Ray starts task workers at nice 15; on a busy machine they would starve behind
            # any other process, so a local instance runs them at normal priority.
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(num_cpus=os.cpu_count(), runtime_env=env, include_dashboard=False,
                     log_to_driver=False)
    task = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(execute)
    refs = {task.remote(run.to_dict(), out, threads=threads, **kwargs): run for run in todo}
    try:
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                run = refs.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as exc:  # the task's worker died
                    yield _crashed(run, kwargs["profile"], exc)
    finally:
        for ref in refs:
            ray.cancel(ref)
        if started_here:
            ray.shutdown()


def run_sweep(plan: Plan, out: str | Path, *, jobs: int = 1, executor: str = "local",
              address: str | None = None, gpus_per_task: float = 0.0, retry_failed: bool = True,
              progress: bool = True, log: Callable[[str], None] = lambda _m: None) -> SweepResult:
    """Run every run of ``plan`` not yet stored as ok in ``out/results.sqlite``."""
    from tqdm.auto import tqdm

    if executor not in EXECUTORS:
        raise GradleakError(f"bad executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    if jobs < 1:
        raise GradleakError(f"bad value {jobs} for --jobs: must be >= 1")
    if gpus_per_task < 0:
        raise GradleakError(f"bad value {gpus_per_task} for --gpus-per-task: must be >= 0")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    save_plan(plan, out)
    result = SweepResult(total=len(plan.runs))
    with ResultStore(out) as store:
        done = store.finished(r.run_id for r in plan.runs)
        failed_before = {r["run_id"] for r in store.rows(experiment=plan.experiment.name,
                                                        status="failed")}
        todo, seen = [], set()
        for run in plan.runs:
            if run.run_id in done or run.run_id in seen or not retry_failed and run.run_id in failed_before:
                result.skipped.append(run.run_id)
            else:
                todo.append(run)
            seen.add(run.run_id)
        if result.skipped:
            log(f"{plan.experiment.name}: {len(result.skipped)} of {len(plan.runs)} runs already "
                "stored, skipping them")
        threads = threads_per_worker(jobs)
        kwargs = {"profile": plan.profile, "plugins": plugins.loaded()}  # re-imported by workers
        rows = (_ray(todo, str(out), kwargs, threads, address, gpus_per_task) if executor == "ray"
                else _local(todo, str(out), kwargs, jobs, threads))
        bar = tqdm(total=len(todo), desc=plan.experiment.name, unit="run", disable=not progress)
        try:
            for row in rows:
                store.put(row)
                if row["status"] == "ok":
                    result.ok.append(row["run_id"])
                else:
                    result.failed[row["run_id"]] = row["error"]
                    log(f"run {row['run_id']} ({row['variant']} {row['labels']}, seed "
                        f"{row['seed']}) failed: {row['error']}")
                bar.update(1)
                shown = {k: row[k] for k in ("psnr", "lpips", "final_accuracy")
                         if isinstance(row.get(k), float)}
                bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()})
        finally:
            bar.close()
    return result
