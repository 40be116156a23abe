"""The example app's pieces build and its ClientApp (both mods) answers a train message."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from flwr.app import ArrayRecord  # noqa: E402

from tests.flower import apps  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flower"


@pytest.fixture(scope="module")
def example():
    sys.path.insert(0, str(EXAMPLE))
    try:
        import client_app
        import server_app
        import task

        yield task, client_app, server_app
    finally:
        sys.path.remove(str(EXAMPLE))


def test_example_client_app_runs_its_mods_on_a_train_message(example):
    task, client_app, server_app = example
    assert len(task.partitions()) == task.NUM_CLIENTS
    arrays = ArrayRecord(task.init_model().state_dict())
    reply = client_app.app(apps.train_message(arrays, node_id=7, server_round=1), apps.context(7, 0))
    if reply.has_error():  # withheld by the guard: the reason carries the measurement
        assert reply.error.reason.startswith("gradleak leakage guard withheld")
    else:
        metrics = reply.content["metrics"]
        assert metrics["num-examples"] == task.BATCH and "gradleak-psnr" in metrics
    assert server_app.make_app(simulation=True) is not None
