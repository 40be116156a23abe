"""One real Flower simulation: 2 clients, 2 rounds, all three gradleak pieces in the app."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

import torch  # noqa: E402
from flwr.app import ArrayRecord, Context, RecordDict  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

from gradleak.defenses import DEFENSES  # noqa: E402
from gradleak.flower.arrays import array_update, to_tensors  # noqa: E402
from tests.flower import apps, sim_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def replay(rounds: int, *, defended: bool) -> dict[str, torch.Tensor]:
    """The FedAvg trajectory the simulation should follow, computed here without Flower's runtime:
    each client's update top-k sparsified exactly by the registered defense, then averaged."""
    global_ = ArrayRecord(apps.make_model().state_dict())
    for rnd in range(1, rounds + 1):
        updates = []
        for partition in (0, 1):
            ctx = Context(run_id=1, node_id=partition, node_config={"partition-id": partition},
                          state=RecordDict(), run_config={})
            reply = apps.train(apps.train_message(global_, partition, rnd), ctx)
            update = array_update(global_, reply.content["arrays"], num_samples=1)
            if defended:
                update = DEFENSES.get("topk")(update, sparsity=sim_app.SPARSITY)
            updates.append(update.tensors)
        before = to_tensors(global_)
        global_ = ArrayRecord({k: before[k] + 0.5 * updates[0][k] + 0.5 * updates[1][k]
                               for k in before})
    return to_tensors(global_)


def test_run_simulation_with_defense_guard_and_audit(tmp_path, monkeypatch):
    # The simulation's workers import the ClientApp's code: give them this checkout.
    paths = [str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    results: list = []
    run_simulation(server_app=sim_app.server_app(str(tmp_path / "audit"), results),
                   client_app=sim_app.client_app, num_supernodes=2,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 1, "include_dashboard": False}})
    assert results, "the ServerApp did not finish"
    (res,) = results

    # Defense mod: the aggregate moved exactly as the top-k defense of each update prescribes.
    final = to_tensors(res["arrays"])
    expected, undefended = replay(sim_app.ROUNDS, defended=True), replay(sim_app.ROUNDS, defended=False)
    for k in final:
        assert torch.allclose(final[k], expected[k], atol=1e-6), k
    assert not all(torch.allclose(final[k], undefended[k], atol=1e-6) for k in final)

    # Guard: every client's measured leakage came back in the (aggregated) train metrics.
    for rnd in range(1, sim_app.ROUNDS + 1):
        metrics = res["train_metrics"][rnd]
        assert 0.0 <= metrics["gradleak-leak-rate"] <= 1.0 and metrics["gradleak-psnr"] > 0

    # Audit: both clients in both rounds, scored against the simulation's ground truth, stored.
    records = res["records"]
    assert sorted((r["round"], r["client"][:4]) for r in records) == [(1, "node"), (1, "node"),
                                                                       (2, "node"), (2, "node")]
    assert all(r["psnr"] > 5 and r["num_samples"] == 1 for r in records)
    db = sqlite3.connect(tmp_path / "audit" / "results.sqlite")
    kinds = db.execute("SELECT count(*), sum(client LIKE '%-guard') FROM runs WHERE status='ok'").fetchone()
    assert kinds == (8, 4)  # 4 audits + 4 guard reports
    assert len(list((tmp_path / "audit").glob("*/round_000*/node*.png"))) == 4
