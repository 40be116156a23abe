"""Interrupts (issue 12, item 4): workers die with the sweep, Ctrl-C keeps finished rows and stops
quickly, and an interrupted train-generator resumes bit-identically."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from gradleak.config import DataConfig
from gradleak.generative import train as train_mod
from gradleak.generative.train import GeneratorTraining, train_generator
from gradleak.runs.store import ResultStore

SLOW = {  # 8 runs of a few seconds each: enough to interrupt mid-sweep
    "title": "slow", "tests": "interrupts", "insight": "-", "kind": "attack",
    "base": {"data.resolution": 16, "model.name": "mlp", "model.hidden": [16],
             "attack.iterations": 400, "attack.name": "ig"},
    "grid": {"data.num_samples": [1, 2]},
    "variants": {"a": {"attack.tv": 0.0}, "b": {"attack.tv": 0.001}},
    "seeds": [0, 1],
}
FAST = {**SLOW, "base": {**SLOW["base"], "attack.iterations": 2}}


def _sweep(tmp_path: Path, spec: dict, jobs: int) -> subprocess.Popen:
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src"),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "gradleak.cli", "experiment", "run", str(path),
                             "--out", str(tmp_path / "out"), "--jobs", str(jobs), "--quiet"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_as_from_a_terminal)


def _as_from_a_terminal() -> None:
    # A child inherits ignored and blocked signals. Native libraries that earlier tests load into
    # this pytest process (Ray's core, gRPC) may ignore SIGINT at the C level, which Python's
    # signal.getsignal cannot see; a sweep started from a terminal gets Ctrl-C delivered.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def _stored(folder: Path) -> int:
    if not (folder / "results.sqlite").is_file():
        return 0
    with ResultStore(folder) as store:
        return len(store.finished())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_the_sweep_kills_its_workers(tmp_path):
    proc = _sweep(tmp_path, SLOW, jobs=2)
    try:
        # The spawn workers appear (the resource tracker is a child too: count python children).
        assert _wait_for(lambda: len(_children(proc.pid)) >= 3, 60), "workers never started"
        workers = _children(proc.pid)
        proc.kill()
        proc.wait()
        assert _wait_for(lambda: not any(_alive(w) for w in workers), 5), "orphaned workers"
    finally:
        proc.kill()
        for w in _children(proc.pid):
            os.kill(w, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_keeps_finished_rows_and_stops_quickly(tmp_path):
    proc = _sweep(tmp_path, SLOW, jobs=2)
    try:
        assert _wait_for(lambda: _stored(tmp_path / "out") >= 1, 120), "no run finished"
        workers = _children(proc.pid)
        assert proc.poll() is None, "the sweep finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)  # not a speed check (benchmarks/bad_inputs.py times it)
        assert proc.returncode == 130, proc.stderr.read()
        assert len(proc.stderr.read().strip().splitlines()) == 1
        assert _wait_for(lambda: not any(_alive(w) for w in workers), 5)
        kept = _stored(tmp_path / "out")
        assert 1 <= kept < 8
    finally:
        proc.kill()
    # The rerun redoes only what was not stored.
    proc = _sweep(tmp_path, FAST | {"base": SLOW["base"]}, jobs=1)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert f"{kept} already stored" in out


def test_interrupted_generator_training_resumes_bit_identically(tmp_path, monkeypatch):
    data = DataConfig(resolution=16)
    settings = GeneratorTraining(steps=6, batch_size=4, latent_dim=8, width=4, checkpoint_every=100)
    train_generator(data, tmp_path / "straight", settings, progress=False)

    real_step = train_mod._step
    calls = {"n": 0}

    def step_then_ctrl_c(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # Ctrl-C arrives in the middle of step 3
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_step", step_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train_generator(data, tmp_path / "split", settings, progress=False)
    state = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3  # step 3 was finished, then checkpointed
    monkeypatch.setattr(train_mod, "_step", real_step)
    train_generator(data, tmp_path / "split", settings, progress=False)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    for part in ("generator", "discriminator"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    assert torch.equal(a["rng"], b["rng"])
    assert not [p for p in (tmp_path / "split").iterdir() if p.name.startswith(".")]
