"""Named experiments, the sweep runner and its SQLite store (tiny grids: MLP, 16 px, few its)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gradleak.errors import GradleakError
from gradleak.experiments.catalog import experiment_names, load_experiment, make_plan
from gradleak.runs.store import ResultStore
from gradleak.runs.sweep import run_sweep, threads_per_worker

PAPER = {"tab1", "tab2", "fig4", "fig5", "fig6", "fig7", "fig9", "fig10", "tab3", "tab4", "fig11",
         "tab6", "tab5"}

TINY = {
    "title": "tiny", "tests": "tiny grid", "insight": "more samples are harder", "kind": "attack",
    "base": {"data.resolution": 16, "model.name": "mlp", "model.hidden": [16],
             "attack.iterations": 8, "attack.name": "ig"},
    "grid": {"data.num_samples": [1, 2]},
    "variants": {"a": {"attack.tv": 0.0}, "b": {"attack.tv": 0.001}},
    "seeds": [0, 1],
    "table": {"cols": "data.num_samples", "metric": "lpips"},
    "plot": {"x": "data.num_samples", "y": "lpips"},
    "verdict": {"rule": "trend", "metric": "lpips", "along": "data.num_samples",
                "direction": "increasing"},
}


def write_spec(tmp_path: Path, spec: dict, name: str = "tiny") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def metric_rows(folder: Path) -> dict[str, tuple]:
    """Run id -> (status, PSNR, LPIPS, N, seed); LPIPS rounded: its float32 convolutions differ
    in the last bits between processes."""
    with ResultStore(folder) as store:
        return {r["run_id"]: (r["status"], r["psnr"], r["lpips"] and round(r["lpips"], 6),
                              r["data.num_samples"],
                              r["seed"]) for r in store.rows()}


def test_every_paper_experiment_exists_and_expands_for_both_profiles():
    assert set(experiment_names()) >= PAPER
    for name in PAPER:
        exp = load_experiment(name)
        assert exp.tests and exp.insight and exp.spec.get("verdict"), name
        for profile in ("quick", "paper"):
            plan = make_plan(name, profile)
            assert plan.runs, (name, profile)
            assert len({r.run_id for r in plan.runs}) == len(plan.runs), (name, profile)
        assert len(make_plan(name, "quick").runs) <= len(make_plan(name, "paper").runs), name


def test_quick_profiles_are_cpu_sized():
    """Quick profiles stay at <= 32 px and a bounded number of runs (the 30-minute budget)."""
    for name in PAPER:
        for run in make_plan(name, "quick").runs:
            cfg = run.config(resolve=None)
            assert cfg.data.resolution <= 32, name
            assert cfg.attack.iterations <= 1000, name
        assert len(make_plan(name, "quick").runs) <= 40, name


def test_long_profiles_are_optional_and_bounded():
    """``long`` exists only where an experiment defines it; where it does it stays CPU-sized
    (<= 32 px) and is asked of no experiment that lacks it."""
    with_long = [n for n in PAPER if "long" in load_experiment(n).profile_names()]
    assert {"fig7", "fig9", "tab3"} <= set(with_long)
    for name in PAPER:
        names = load_experiment(name).profile_names()
        assert names[0] == "quick" and names[-1] == "paper", name
        if name not in with_long:
            with pytest.raises(GradleakError, match=f"bad profile 'long' for experiment {name}; "
                                                    "allowed: quick, paper"):
                make_plan(name, "long")
    for name in with_long:
        runs = make_plan(name, "long").runs
        assert runs and len(runs) <= 40, name
        assert all(r.config(resolve=None).data.resolution <= 32 for r in runs), name


def test_bad_experiment_inputs_give_one_line_errors(tmp_path):
    with pytest.raises(GradleakError, match="unknown experiment 'nope'"):
        load_experiment("nope")
    with pytest.raises(GradleakError, match="bad profile 'fast'"):
        make_plan("tab1", "fast")
    with pytest.raises(GradleakError, match="unknown keys"):
        load_experiment(write_spec(tmp_path, {**TINY, "gird": {}}, "typo"))
    bad = {**TINY, "variants": {"a": {"attack.tvv": 1.0}}}
    with pytest.raises(GradleakError, match="variant a.*attack.tvv"):
        make_plan(write_spec(tmp_path, bad, "badkey"), "quick")
    with pytest.raises(GradleakError, match="unknown experiment kind 'nope'"):
        load_experiment(write_spec(tmp_path, {**TINY, "kind": "nope"}, "badkind"))


def test_overrides_apply_to_every_run_and_change_the_run_ids(tmp_path):
    path = write_spec(tmp_path, TINY)
    plain = make_plan(path, "quick")
    over = make_plan(path, "quick", ["attack.iterations=5"])
    assert all(r.config(resolve=None).attack.iterations == 5 for r in over.runs)
    assert {r.run_id for r in plain.runs}.isdisjoint(r.run_id for r in over.runs)


def test_tiny_grid_end_to_end_store_resume_and_failures(tmp_path):
    spec = {**TINY, "variants": {**TINY["variants"],
                                 "broken": {"attack.name": "gias",
                                            "attack.generator": str(tmp_path / "missing.pt"),
                                            "threat.knows_data_distribution": True}}}
    plan = make_plan(write_spec(tmp_path, spec), "quick")
    out = tmp_path / "sweep"
    first = run_sweep(plan, out, progress=False)
    assert len(first.ok) == 8 and len(first.failed) == 4
    assert all("missing.pt" in err for err in first.failed.values())
    with ResultStore(out) as store:
        rows = store.rows()
    assert len(rows) == 12
    ok = [r for r in rows if r["status"] == "ok"]
    # one tidy row per run: scenario fields, seed, metrics, timings, config hash
    for r in ok:
        assert r["data.num_samples"] in (1, 2) and r["model.name"] == "mlp"
        assert 0 <= r["lpips"] <= 1 and r["psnr"] > 0 and r["seconds"] > 0
        assert len(r["config_hash"]) == 16 and r["result"]["metrics"]["psnr"] == r["psnr"]
        assert (out / "runs" / r["run_id"] / "reconstruction.png").is_file()
    assert (out / "plans" / "tiny-quick.yaml").is_file()
    # A rerun redoes nothing that finished, and retries the failures.
    before = metric_rows(out)
    second = run_sweep(plan, out, progress=False)
    assert len(second.skipped) == 8 and not second.ok and len(second.failed) == 4
    assert metric_rows(out) == before
    third = run_sweep(plan, out, progress=False, retry_failed=False)
    assert len(third.skipped) == 12 and not third.failed


def test_same_seed_same_numbers_and_parallel_jobs_match(tmp_path):
    plan = make_plan(write_spec(tmp_path, TINY), "quick")
    run_sweep(plan, tmp_path / "one", progress=False)
    run_sweep(plan, tmp_path / "two", jobs=2, progress=False)
    assert metric_rows(tmp_path / "one") == metric_rows(tmp_path / "two")
    assert threads_per_worker(2, cores=2) == 1


def test_threads_per_worker_divides_cores_and_respects_omp(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_per_worker(1, cores=8) == 8 and threads_per_worker(3, cores=8) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads_per_worker(1, cores=8) == 1


def test_default_jobs_is_two_where_two_cores_exist_and_the_environment_overrides(monkeypatch):
    from gradleak.errors import GradleakError
    from gradleak.runs.sweep import default_jobs

    monkeypatch.delenv("GRADLEAK_JOBS", raising=False)
    assert default_jobs(cores=1) == 1 and default_jobs(cores=2) == 2 and default_jobs(cores=16) == 2
    monkeypatch.setenv("GRADLEAK_JOBS", "3")
    assert default_jobs(cores=2) == 3
    monkeypatch.setenv("GRADLEAK_JOBS", "two")
    with pytest.raises(GradleakError, match="GRADLEAK_JOBS='two'"):
        default_jobs()


def test_a_lone_run_runs_in_this_process_with_every_core(tmp_path, monkeypatch):
    # jobs=2 for one run would spawn a pool (seconds of start-up) and leave a core idle
    from gradleak.runs import sweep

    seen = {}
    monkeypatch.setattr(sweep, "_local", lambda todo, out, kw, jobs, threads, put: seen.update(
        jobs=jobs, threads=threads))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 2)
    plan = make_plan(write_spec(tmp_path, TINY), "quick")
    plan.runs[:] = plan.runs[:1]
    run_sweep(plan, tmp_path / "one", jobs=2, progress=False)
    assert seen == {"jobs": 1, "threads": 2}


def test_killed_sweep_resumes_without_losing_or_repeating_runs(tmp_path):
    spec = {**TINY, "seeds": [0, 1, 2]}
    spec["base"] = {**TINY["base"], "attack.iterations": 60}
    path = write_spec(tmp_path, spec)
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "gradleak.cli", "experiment", "run", path, "--out", str(out),
           "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    db = out / "results.sqlite"
    deadline = time.time() + 120
    done_before: dict[str, str] = {}
    while time.time() < deadline:
        if db.is_file():
            try:
                with sqlite3.connect(db) as con:
                    done_before = dict(con.execute("SELECT run_id, finished_at FROM runs"))
            except sqlite3.OperationalError:
                pass
        if len(done_before) >= 3:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= len(done_before) < 12, "the sweep should be killed mid-way"
    with sqlite3.connect(db) as con:
        at_kill = dict(con.execute("SELECT run_id, finished_at FROM runs"))
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{len(at_kill)} of 12 runs already stored" in resumed.stdout
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT run_id, finished_at, status FROM runs").fetchall()
    assert len(rows) == 12 and len({r[0] for r in rows}) == 12
    assert all(r[2] == "ok" for r in rows)
    final = {r[0]: r[1] for r in rows}
    assert all(final[k] == v for k, v in at_kill.items()), "a finished run was redone"
    assert {r.run_id for r in make_plan(path, "quick").runs} == set(final)


def test_generator_artifact_is_built_once_and_substituted(tmp_path):
    spec = {**TINY, "prepare": {"gen": {"data": {"dataset": "skimage"}, "steps": 2,
                                        "batch_size": 8, "width": 8, "latent_dim": 8}},
            "grid": {"data.num_samples": [1]},
            "variants": {"L": {"attack.name": "gias", "attack.generator": "${gen}",
                               "threat.knows_data_distribution": True,
                               "attack.latent_iterations": 2, "attack.generator_iterations": 2}}}
    plan = make_plan(write_spec(tmp_path, spec), "quick")
    assert all("${gen}" in r.overrides["attack.generator"] for r in plan.runs)
    # a generator trained differently makes different runs
    other = {**spec, "prepare": {"gen": {**spec["prepare"]["gen"], "steps": 3}}}
    other_ids = {r.run_id for r in make_plan(write_spec(tmp_path, other, "other"), "quick").runs}
    assert other_ids.isdisjoint(r.run_id for r in plan.runs)
    with pytest.raises(GradleakError, match=r"\$\{nope\} is not a prepare entry"):
        make_plan(write_spec(tmp_path, {**spec, "variants": {"L": {"attack.generator": "${nope}"}}},
                             "nope"), "quick")
    result = run_sweep(plan, tmp_path / "sweep", progress=False)
    assert len(result.ok) == 2, result.failed
    gens = list((tmp_path / "sweep" / "cache" / "generators").glob("gen-*/generator.pt"))
    assert len(gens) == 1
    with ResultStore(tmp_path / "sweep") as store:
        rows = store.rows()
    # the stored config keeps the placeholder (ids do not depend on the folder) ...
    assert {r["attack.generator"] for r in rows} == {"${gen}"}
    # ... and the resolved config says which file was used
    assert {r["result"]["resolved_config"]["attack"]["generator"] for r in rows} == {str(gens[0])}


def test_stage_kind_trains_once_and_attacks_each_round(tmp_path):
    spec = {"title": "stage", "kind": "stage", "tests": "t", "insight": "i",
            "base": {"data.resolution": 16, "model.name": "mlp", "model.hidden": [16],
                     "attack.iterations": 5, "client.protocol": "fedavg", "client.batch_size": 8,
                     "fl.clients": 3, "fl.fraction": 1.0, "fl.rounds": 2, "fl.victim_samples": 1},
            "options": {"igsa_points": 1},
            "grid": {"run.round": [0, 2]}, "seeds": [0]}
    plan = make_plan(write_spec(tmp_path, spec, "stage"), "quick")
    result = run_sweep(plan, tmp_path / "sweep", jobs=2, progress=False)
    assert len(result.ok) == 2, result.failed
    assert len(list((tmp_path / "sweep" / "cache" / "federated").glob("*/accuracy.json"))) == 1
    with ResultStore(tmp_path / "sweep") as store:
        rows = {r["run.round"]: r for r in store.rows()}
    assert set(rows) == {0, 2}
    assert all(0 <= r["accuracy"] <= 1 and r["igsa"] > 0 for r in rows.values())


def test_privacy_utility_kind_and_accuracy_drop(tmp_path):
    from gradleak.report.experiments import derive

    spec = {"title": "pu", "kind": "privacy_utility", "tests": "t", "insight": "i",
            "base": {"data.resolution": 16, "model.name": "mlp", "model.hidden": [16],
                     "attack.iterations": 5, "client.protocol": "fedavg", "client.batch_size": 8,
                     "fl.clients": 3, "fl.fraction": 1.0, "fl.rounds": 1, "fl.victim_samples": 1},
            "variants": {"none": {"defense.name": "none"},
                         "sign": {"defense.name": "signsgd"}}, "seeds": [0]}
    plan = make_plan(write_spec(tmp_path, spec, "pu"), "quick")
    result = run_sweep(plan, tmp_path / "sweep", progress=False)
    assert len(result.ok) == 2, result.failed
    with ResultStore(tmp_path / "sweep") as store:
        rows = store.rows()
    derive(rows)
    by = {r["variant"]: r for r in rows}
    assert by["none"]["accuracy_drop"] == 0
    assert by["sign"]["accuracy_drop"] == pytest.approx(
        100 * (by["none"]["final_accuracy"] - by["sign"]["final_accuracy"]), abs=1e-3)


def test_privacy_utility_kind_on_a_causal_lm_scores_text_and_perplexity(tmp_path):
    pytest.importorskip("transformers")
    from gradleak.report.experiments import derive

    spec = {"title": "pu-text", "kind": "privacy_utility", "tests": "t", "insight": "i",
            "base": {"data.dataset": "personal", "data.max_length": 8, "model.name": "gpt2-tiny",
                     "model.hidden_size": 32, "model.layers": 2, "model.heads": 2,
                     "attack.name": "dager", "client.protocol": "fedsgd", "fl.clients": 3,
                     "fl.fraction": 1.0, "fl.rounds": 1, "fl.victim_samples": 1,
                     "fl.test_samples": 8, "data.distinct_labels": False},
            "variants": {"none": {"defense.name": "none"},
                         "sign": {"defense.name": "signsgd"}}, "seeds": [0]}
    plan = make_plan(write_spec(tmp_path, spec, "pu-text"), "quick")
    result = run_sweep(plan, tmp_path / "sweep", progress=False)
    assert len(result.ok) == 2, result.failed
    with ResultStore(tmp_path / "sweep") as store:
        rows = store.rows()
    derive(rows)
    by = {r["variant"]: r for r in rows}
    assert by["none"]["rouge1"] == 1.0 and by["none"]["leak_rate"] is not None  # DAGER, exact
    assert by["none"]["final_perplexity"] > 1 and by["none"]["perplexity_increase"] == 0
    assert by["sign"]["perplexity_increase"] == pytest.approx(
        100 * (by["sign"]["final_perplexity"] / by["none"]["final_perplexity"] - 1), abs=1e-3)
    texts = list((tmp_path / "sweep" / "runs").glob("*/reconstruction.txt"))
    assert len(texts) == 2 and "original:" in texts[0].read_text()


def test_experiment_cli_list_and_bad_executor(tmp_path, capsys):
    from gradleak.cli import main

    assert main(["experiment", "list"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in PAPER)
    assert main(["experiment", "run", write_spec(tmp_path, TINY), "--out", str(tmp_path / "o"),
                 "--executor", "dask"]) == 2
    assert "invalid choice: 'dask'" in capsys.readouterr().err


def test_ray_executor_on_a_local_instance_matches_the_local_executor(tmp_path):
    pytest.importorskip("ray", reason="ray is installed by `make test` (the dev extra)")
    spec = {**TINY, "variants": {"a": {"attack.tv": 0.0}}, "seeds": [0]}
    plan = make_plan(write_spec(tmp_path, spec), "quick")
    run_sweep(plan, tmp_path / "local", progress=False)
    result = run_sweep(plan, tmp_path / "ray", executor="ray", jobs=2, progress=False)
    assert len(result.ok) == 2, result.failed
    assert metric_rows(tmp_path / "ray") == metric_rows(tmp_path / "local")
    with ResultStore(tmp_path / "ray") as store:
        assert all(r["status"] == "ok" and r["worker"] for r in store.rows())


def test_gpu_check_grid_is_prepared_and_the_script_refuses_without_cuda():
    """benchmarks/gpu_check.sh's grid validates with device=cuda (paper profiles too) and is
    small; on a machine without CUDA the script stops at once with one line."""
    import torch

    root = Path(__file__).resolve().parents[2]
    plan = make_plan(str(root / "benchmarks/gpu/tab1_resnet18.yaml"), "quick", ["device=cuda"])
    cfgs = [r.config(resolve=None) for r in plan.runs]
    assert len(cfgs) == 8 and {c.device for c in cfgs} == {"cuda"}
    assert {c.model.name for c in cfgs} == {"resnet18"} and {c.data.resolution for c in cfgs} == {32}
    assert {c.attack.name for c in cfgs} == {"ig", "gias"}
    for name in PAPER:
        assert make_plan(name, "paper", ["device=cuda"]).runs, name
    if not torch.cuda.is_available():
        done = subprocess.run(["bash", str(root / "benchmarks/gpu_check.sh")], capture_output=True,
                              text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=120)
        assert done.returncode != 0 and "no CUDA device here" in done.stderr
