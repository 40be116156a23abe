"""What an audit will use and roughly how long it will take (``gradleak check``; ``gradleak
audit`` logs the same before it starts).

The time is calibrated on this machine: building the scenario, one client round, a short run of
the first level's attack (``CALIBRATION_ITERATIONS``) and scoring it, then scaled by the
budget's iterations x restarts, the levels that will run and the verdict rule's round size
(first round) and cap (every level run to the cap). It is an order of magnitude, not a
promise: other levels' attacks cost more or less per iteration than level 0's, plateau stops
end runs early, and a leaking setup's recommendation (defense search and FL trainings) comes on
top.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

from gradleak.audit.ladder import Ladder, Setup, level_config, skipped

CALIBRATION_ITERATIONS = 5
ZOO_KEYS = ("model.width", "model.depth", "model.norm", "model.activation",
                    "model.pooling", "model.kernel_size", "model.padding", "model.hidden",
                    "model.small_input", "model.skip_cuts", "model.dense_connections")

MIX_KEYS = ("client.mix_k", "client.mix_lower", "client.mix_upper", "threat.knows_mixing")


def ineffective_keys(setup: Setup, given: dict[str, Any]) -> list[str]:
    """One warning line per key the user set that has no effect in this setup."""
    cfg, out = setup.cfg, []
    if cfg.client.protocol == "fedsgd":
        for key in ("client.batch_size", "client.local_epochs"):
            if key in given:
                out.append(f"{key}={given[key]} has no effect with client.protocol=fedsgd (one "
                           "gradient on all data.num_samples samples); use client.protocol=fedavg")
    if cfg.client.mix == "none":
        out += [f"{key}={given[key]} has no effect with client.mix=none (the client does not "
                "mix); set client.mix=mixup or instahide" for key in MIX_KEYS if key in given]
    if ".py:" in cfg.model.name:
        out += [f"{key} has no effect on your own model (model.name={cfg.model.name}): it "
                "configures gradleak's model zoo" for key in ZOO_KEYS if key in given]
    return out


def warn_ineffective(setup: Setup, given: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # every run says it, not only the first in a process
        for line in ineffective_keys(setup, given):
            warnings.warn(line, stacklevel=2)


def safe_estimate(ladder: Ladder, setup: Setup, budget: dict[str, Any], rule: Any, *,
                  jobs: int = 1) -> tuple[dict[str, Any] | None, str]:
    """:func:`estimate` and its line; a calibration that fails (a model that raises in the
    attack) gives no estimate and says why: the audit's own runs then record the failure."""
    try:
        est = estimate(ladder, setup, budget, rule, jobs=jobs)
    except Exception as exc:  # the runs report it properly, as failed runs
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return None, f"no time estimate: the calibration run failed ({type(exc).__name__}: {first})"
    return est, estimate_line(est)


def calibrate(ladder: Ladder, setup: Setup, budget: dict[str, Any]) -> dict[str, float]:
    """Seconds of one client round and of one attack iteration (or one whole non-iterative
    attack) of the first level that runs, measured here."""
    from gradleak.scenario import Scenario

    level = next((lv for lv in ladder.levels if lv.level < 5 and skipped(lv, setup) is None),
                 ladder.levels[0])
    cfg = level_config(ladder, level, setup, budget, seed=setup.cfg.seed,
                       extra={"attack.iterations": CALIBRATION_ITERATIONS, "attack.restarts": 1})
    started = time.perf_counter()
    sc = Scenario.from_config(cfg)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    round_ = sc.client_round()
    client_s = time.perf_counter() - started
    obs = sc.observe(sc.defend(round_.update))
    started = time.perf_counter()
    recon = sc.reconstruct(obs)
    attack_s = time.perf_counter() - started
    started = time.perf_counter()
    sc.score(recon)
    score_s = time.perf_counter() - started
    iterative = recon.iterations and recon.iterations > 0
    return {"client_round_s": client_s, "overhead_s": build_s + score_s,
            "iteration_s": attack_s / recon.iterations if iterative else 0.0,
            "attack_s": 0.0 if iterative else attack_s}


def estimate(ladder: Ladder, setup: Setup, budget: dict[str, Any], rule: Any, *,
             jobs: int = 1) -> dict[str, Any]:
    """The calibration and the audit's rough wall time (first round; every level to the cap),
    calibrated at the torch threads a worker of ``jobs`` gets (one run per core on 2 cores is
    slower than one run on both, so dividing a 2-thread time by ``jobs`` would flatter it)."""
    import torch

    from gradleak.runs.sweep import threads_per_worker

    before = torch.get_num_threads()
    torch.set_num_threads(threads_per_worker(jobs))
    try:
        cal = calibrate(ladder, setup, budget)
    finally:
        torch.set_num_threads(before)
    attack = budget.get("attack") or {}
    iters = int(setup.user_attack.get("attack.iterations", attack.get("iterations", 0)) or 0)
    restarts = int(setup.user_attack.get("attack.restarts", attack.get("restarts", 1)) or 1)
    run_s = (cal["overhead_s"] + cal["client_round_s"] + cal["attack_s"]
             + cal["iteration_s"] * iters * restarts)
    levels = [lv.name for lv in ladder.levels if skipped(lv, setup) is None]
    first = run_s * len(levels) * rule.round_size / max(1, jobs)
    most = run_s * len(levels) * rule.max_runs / max(1, jobs)
    return {**{k: round(v, 4) for k, v in cal.items()}, "run_s": round(run_s, 2),
            "levels": levels, "first_round_s": round(first, 1), "at_most_s": round(most, 1),
            "note": "calibrated on this machine from one client round and "
                    f"{CALIBRATION_ITERATIONS} attack iterations of the first level; other "
                    "levels' iterations cost more or less, plateau stops end runs early, and a "
                    "leaking setup's recommendation comes on top"}


def _minutes(seconds: float) -> str:
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def estimate_line(est: dict[str, Any]) -> str:
    """The estimate in one line."""
    per = (f"{est['iteration_s'] * 1000:.1f} ms per attack iteration" if est["iteration_s"]
           else f"{est['attack_s']:.2f} s per attack")
    return (f"estimated time: first round ~{_minutes(est['first_round_s'])}, every level to the "
            f"cap at most ~{_minutes(est['at_most_s'])} ({len(est['levels'])} levels, "
            f"~{_minutes(est['run_s'])} per run; {per}, {est['client_round_s']:.2f} s per client "
            "round, measured here; the recommendation comes on top when it leaks)")
