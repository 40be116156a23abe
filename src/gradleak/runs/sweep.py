"""Run an experiment's grid and store every finished run at once (resumable).

Executors:

* ``local``: ``jobs=1`` runs in this process; ``jobs=N`` in N spawned worker processes, each with
  ``cores // N`` torch threads (oversubscribed OpenMP threads stall on small CPUs). Workers die
  with the main process (Linux ``PR_SET_PDEATHSIG`` plus a parent-pid watchdog elsewhere) and
  ignore Ctrl-C, which the main process handles: it stores every run already finished, kills the
  workers and returns within about a second.
* ``ray``: one Ray task per run on the cluster at ``address`` (else ``$RAY_ADDRESS``, else a
  local Ray instance). Each task reserves ``cluster CPUs // jobs`` CPUs (at most the largest
  node's), so ``jobs`` is the number of runs in flight (at least one per node); ``gpus_per_task``
  > 0 reserves that share of a GPU *and* runs on it (``device=cuda``, which Ray maps to the
  reserved GPU). A task whose worker or node is lost is retried ``retries`` times.

Shared storage: the sweep folder must be one file system that every node mounts at the same
path (runs write their images there, and shared artifacts are built once under
``<out>/cache`` with POSIX ``fcntl.lockf`` locks). Those locks exclude across nodes on local
disks, NFSv3 with ``lockd`` and NFSv4 (Linux clients), Lustre with ``-o flock``, GPFS and
CephFS; they do NOT on mounts without POSIX locking (``nolock`` NFS, s3fs/gcsfuse and other
object-store FUSE mounts), where two nodes may build the same artifact at once.

Either way the main process is the store's only writer: it inserts each row as its run
returns, so killing the sweep loses only the runs in flight, and a rerun skips every run whose
row says ``ok``. Failed runs are stored with their error and retried on the next invocation.

Every run imports the driver's plug-ins first (:func:`gradleak.runs.worker.execute`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

from gradleak import plugins
from gradleak.errors import GradleakError
from gradleak.io import write_text
from gradleak.provenance import git_commit, versions
from gradleak.runs.lifecycle import init_worker
from gradleak.runs.spec import Plan, RunSpec, preflight
from gradleak.runs.store import ResultStore
from gradleak.runs.worker import execute

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


DEFAULT_JOBS = 2  # measured on 2 cores (docs/audit.md, "Budget and time"): 2 jobs beat 1


def default_jobs(cores: int | None = None) -> int:
    """The ``--jobs`` of ``gradleak audit`` and ``check`` when none is given: ``$GRADLEAK_JOBS``
    when set, else :data:`DEFAULT_JOBS` capped by the cores (one run per core at one thread each
    on 2 cores: the measured win)."""
    given = os.environ.get("GRADLEAK_JOBS", "").strip()
    if given:
        if not given.isdigit() or int(given) < 1:
            raise GradleakError(f"bad GRADLEAK_JOBS={given!r}: a whole number >= 1")
        return int(given)
    return max(1, min(DEFAULT_JOBS, cores or os.cpu_count() or 1))


def save_plan(plan: Plan, out: Path) -> Path:
    """Write the resolved plan (every run, the settings, provenance) next to the store."""
    data = plan.to_dict()
    data["provenance"] = {"git_commit": git_commit(), "versions": versions()}
    path = out / "plans" / f"{plan.experiment.name}-{plan.profile}.yaml"
    plain = json.loads(json.dumps(data, default=str))  # version objects -> strings
    write_text(path, yaml.safe_dump(plain, sort_keys=False))
    return path


def _local(todo: list[RunSpec], out: str, kwargs: dict[str, Any], jobs: int, threads: int,
           put: Callable[[dict[str, Any]], None]) -> None:
    if jobs == 1:
        for run in todo:
            put(execute(run.to_dict(), out, threads=threads, **kwargs))
        return
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by the spawned workers
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"),
                               initializer=init_worker, initargs=(os.getpid(),))
    pending = {}
    try:
        pending = {pool.submit(execute, run.to_dict(), out, threads=threads, **kwargs): run
                   for run in todo}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                run = pending.pop(fut)
                exc = fut.exception()
                put(fut.result() if exc is None else _crashed(run, kwargs["profile"], exc))
    except BaseException:  # Ctrl-C or an error: keep what finished, stop the rest now
        for fut in list(pending):
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                put(fut.result())
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.kill()  # queued and running runs are redone on the next invocation
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


def _crashed(run: RunSpec, profile: str, exc: BaseException) -> dict[str, Any]:
    """The row of a run whose worker died (out of memory, killed): recorded, retried later."""
    return {"run_id": run.run_id, "experiment": run.experiment, "profile": profile,
            "kind": run.kind, "variant": run.variant, "seed": run.seed, "labels": run.labels,
            "status": "failed", "error": f"worker crashed: {type(exc).__name__}: {exc}"}


def _ray_task(run: dict[str, Any], out: str, threads: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """One Ray task: the run (execute imports the driver's plug-ins first)."""
    return execute(run, out, threads=threads, **kwargs)


def ray_threads(nodes: list[dict[str, Any]], jobs: int) -> int:
    """CPUs (= torch threads) per Ray task from the cluster's alive nodes: ``total // jobs``,
    at most the largest node's CPUs (a task runs on one node), at least 1."""
    cpus = [int(n.get("Resources", {}).get("CPU", 0)) for n in nodes if n.get("Alive", True)]
    if not cpus or max(cpus) < 1:
        raise GradleakError("the Ray cluster has no alive node with CPUs")
    return max(1, min(max(cpus), sum(cpus) // max(1, jobs)))


def on_gpu(plan_runs: list[RunSpec]) -> list[RunSpec]:
    """The runs with ``device=cuda`` unless a run already names a CUDA device (``cuda:N``)."""
    return [run if str(run.overrides.get("device", "")).startswith("cuda") else
            dataclasses.replace(run, overrides={**run.overrides, "device": "cuda"})
            for run in plan_runs]


RAY_CONNECT_SECONDS = 5.0  # ray.init retries an unreachable address for minutes; we do not


def ray_preflight(address: str | None) -> None:
    """One line, within ``RAY_CONNECT_SECONDS``, when Ray is missing or nothing listens at the
    cluster ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``; ``auto`` and none are local)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise GradleakError("--executor ray needs the ray package: pip install 'ray>=2.9'") from None
    if not address or address in ("auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        raise GradleakError(f"bad value {address!r} for --address: expected HOST:PORT or "
                            "ray://HOST:PORT (the head node's GCS or client port)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_SECONDS):
            pass
    except OSError as exc:
        raise GradleakError(f"no Ray cluster at {address}: cannot connect to {host}:{port} "
                            f"({exc.strerror or type(exc).__name__}); start one with `ray start "
                            "--head` or fix --address / $RAY_ADDRESS") from None


def _ray(todo: list[RunSpec], out: str, kwargs: dict[str, Any], jobs: int, address: str | None,
         gpus: float, retries: int, put: Callable[[dict[str, Any]], None]) -> None:
    try:
        import ray
    except ImportError:
        raise GradleakError("--executor ray needs the ray package: pip install 'ray>=2.9'") from None
    address = address or os.environ.get("RAY_ADDRESS")
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # Ray starts task workers at nice 15; on a busy machine they would starve behind
            # any other process, so a local instance runs them at normal priority.
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    refs: dict[Any, RunSpec] = {}
    try:
        threads = ray_threads(ray.nodes(), jobs)
        # max_retries: resubmitted when the worker process or its node dies (system failures);
        # a run that raises is not retried here: execute() stores it as a failed row.
        task = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=retries,
                          retry_exceptions=False)(_ray_task)
        refs = {task.remote(run.to_dict(), out, threads, kwargs): run for run in todo}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                run = refs.pop(ref)
                try:
                    put(ray.get(ref))
                except Exception as exc:  # retries exhausted: the task's worker kept dying
                    put(_crashed(run, kwargs["profile"], exc))
    finally:
        for ref in refs:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()


def run_sweep(plan: Plan, out: str | Path, *, jobs: int = 1, executor: str = "local",
              address: str | None = None, gpus_per_task: float = 0.0, retries: int = 2,
              retry_failed: bool = True, progress: bool = True, rerun: bool = False,
              log: Callable[[str], None] = lambda _m: None) -> SweepResult:
    """Run every run of ``plan`` not yet stored as ok in ``out/results.sqlite`` (every run
    with ``rerun``: stored rows are then replaced as the runs finish)."""
    from gradleak.progress import tqdm

    if executor not in EXECUTORS:
        raise GradleakError(f"bad executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    if jobs < 1:
        raise GradleakError(f"bad value {jobs} for --jobs: must be >= 1")
    if not gpus_per_task >= 0 or gpus_per_task == float("inf"):
        raise GradleakError(f"bad value {gpus_per_task} for --gpus-per-task: must be >= 0")
    if retries < 0:
        raise GradleakError(f"bad value {retries} for --retries: must be >= 0")
    if gpus_per_task > 0 and executor != "ray":
        raise GradleakError("--gpus-per-task needs --executor ray; locally, set device=cuda")
    if executor == "ray":
        ray_preflight(address or os.environ.get("RAY_ADDRESS"))
    runs = on_gpu(plan.runs) if gpus_per_task > 0 else plan.runs
    out = Path(out).resolve()
    with ResultStore(out) as store:  # a corrupt store is refused before anything is written
        out.mkdir(parents=True, exist_ok=True)
        save_plan(plan, out)
        result = SweepResult(total=len(runs))
        done = set() if rerun else store.finished(r.run_id for r in runs)
        failed_before = {r["run_id"] for r in store.rows(experiment=plan.experiment.name,
                                                        status="failed")}
        todo, seen = [], set()
        for run in runs:
            if run.run_id in done or run.run_id in seen or not retry_failed and run.run_id in failed_before:
                result.skipped.append(run.run_id)
            else:
                todo.append(run)
            seen.add(run.run_id)
        if result.skipped:
            log(f"{plan.experiment.name}: {len(result.skipped)} of {len(runs)} runs already "
                "stored, skipping them")
        # make_plan checked every config; the data files are checked for the runs to do, so a
        # missing file stops the sweep in one line instead of failing each of its runs.
        preflight(todo, plan.profile, data=True)
        kwargs = {"profile": plan.profile, "plugins": plugins.loaded()}  # re-imported by workers
        bar = tqdm(total=len(todo), desc=plan.experiment.name, unit="run", disable=not progress)

        def put(row: dict[str, Any]) -> None:
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
            bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})

        try:
            if executor == "ray":
                _ray(todo, str(out), kwargs, jobs, address, gpus_per_task, retries, put)
            else:
                # never more workers than runs: a lone run gets every core, in this process
                local_jobs = max(1, min(jobs, len(todo)))
                _local(todo, str(out), kwargs, local_jobs, threads_per_worker(local_jobs), put)
        finally:
            bar.close()
    return result
