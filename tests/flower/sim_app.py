"""The 2-client Flower app the simulation test runs (a module, so the simulation's workers can
import what the ClientApp refers to)."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from gradleak.flower import LeakageAuditStrategy, defense_mod, leakage_guard_mod
from tests.flower import apps

ROUNDS = 2
SPARSITY = 0.5

client_app = ClientApp(mods=[
    leakage_guard_mod(apps.make_model, apps.data_fn, budget=20, on_leak="report"),
    defense_mod("topk", sparsity=SPARSITY),
])


@client_app.train()
def train(msg, ctx: Context):
    return apps.train(msg, ctx)


def ground_truth(server_round, reply):
    return apps.client_data(int(reply.content["metrics"]["partition-id"]))


def server_app(out: str, results: list) -> ServerApp:
    """A ServerApp whose final arrays and audit records land in ``results``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, ctx: Context) -> None:
        strategy = LeakageAuditStrategy(
            FedAvg(fraction_evaluate=0.0, min_available_nodes=2, min_train_nodes=2),
            model_fn=apps.make_model, input_shape=(3, apps.RES, apps.RES), attack="ig", budget=20,
            out=out, ground_truth=ground_truth,
            config=apps.OVERRIDES + ["threat.knows_labels=true", "attack.labels=known"])
        initial = ArrayRecord(apps.make_model().state_dict())
        result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=ROUNDS,
                                train_config=ConfigRecord())
        results.append({"arrays": result.arrays, "records": strategy.records,
                        "train_metrics": result.train_metrics_clientapp})

    return app
