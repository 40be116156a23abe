"""The ServerApp: FedAvg wrapped in gradleak's audit strategy (the lines marked +)."""

from __future__ import annotations

import task
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from gradleak.flower import LeakageAuditStrategy  # +


def ground_truth(server_round: int, reply: Message):
    """Simulation only: the samples behind a reply, so the audit can score itself."""
    partition = int(reply.content["metrics"]["partition-id"])
    return task.round_batch(partition, server_round)


def make_app(out: str = "reports/flower-example", rounds: int = 4, summary: list | None = None,
             simulation: bool = True) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = LeakageAuditStrategy(  # +
            FedAvg(fraction_evaluate=0.0, min_train_nodes=task.NUM_CLIENTS,
                   min_available_nodes=task.NUM_CLIENTS),
            model_fn=task.Net, input_shape=(task.dataset().channels, task.RESOLUTION, task.RESOLUTION),
            attack="ig", budget=300, every=2, clients=2, out=out,
            config=["client.protocol=fedsgd", f"client.lr={task.LR}"],
            ground_truth=ground_truth if simulation else None)
        result = strategy.start(
            grid=grid, initial_arrays=ArrayRecord(task.init_model().state_dict()), num_rounds=rounds,
            train_config=ConfigRecord(), evaluate_fn=evaluate)
        if summary is not None:
            summary.append({"records": strategy.records, "train": result.train_metrics_clientapp,
                            "accuracy": result.evaluate_metrics_serverapp})

    return app


def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    net = task.Net()
    net.load_state_dict(arrays.to_torch_state_dict())
    return MetricRecord({"accuracy": task.accuracy(net)})


app = make_app(simulation=False)
