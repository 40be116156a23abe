"""The ServerApp: FedAvg over the LoRA adapters, wrapped in gradleak's audit (the lines marked +).

Every round, the audit runs DAGER (Petrov et al., NeurIPS 2024) on each client's adapter update
with what the server has: the global model and the reply. It writes the recovered sentences to
``<out>/<run>/round_RRRR/<node>.txt`` and puts the round's summary (``gradleak-leak-rate``,
``gradleak-rouge1``, ...) into the round's train metrics, beside the clients' own.
"""

from __future__ import annotations

import task
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from gradleak.flower import LeakageAuditStrategy  # +


def ground_truth(server_round: int, reply: Message):
    """Simulation only: the sentence behind a reply, so the audit can score itself."""
    x = task.round_batch(int(reply.content["metrics"]["partition-id"]), server_round)
    return x, torch.zeros(x.shape[0], dtype=torch.long)  # a causal LM has no class label


def make_app(out: str = "reports/flower-text-example", rounds: int = 2,
             summary: list | None = None, simulation: bool = True) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = LeakageAuditStrategy(  # +
            FedAvg(fraction_evaluate=0.0, min_train_nodes=task.NUM_CLIENTS,
                   min_available_nodes=task.NUM_CLIENTS),
            model_fn=task.model_fn, attack="dager", out=out,
            config=[f"data.max_length={task.MAX_LENGTH}", "client.protocol=fedsgd",
                    f"client.lr={task.LR}"],
            reference_texts=task.public_texts(),
            ground_truth=ground_truth if simulation else None)
        result = strategy.start(
            grid=grid, initial_arrays=ArrayRecord(task.trainable_state(task.model_fn())),
            num_rounds=rounds, train_config=ConfigRecord(), evaluate_fn=evaluate)
        if summary is not None:
            summary.append({"records": strategy.records, "train": result.train_metrics_clientapp,
                            "perplexity": result.evaluate_metrics_serverapp})

    return app


def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    net = task.model_fn()
    net.load_state_dict(arrays.to_torch_state_dict(), strict=False)
    return MetricRecord({"perplexity": task.held_out_perplexity(net)})


app = make_app(simulation=False)
