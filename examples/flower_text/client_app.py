"""The ClientApp: a plain Flower LoRA client plus gradleak's defense mod (the lines marked +).

The client loads the adapters it receives, takes one SGD step on one of its sentences and sends
its adapters back. The mod post-processes that update before it leaves: by default it clips the
update's L2 norm (``clip_norm``, the first half of DP-SGD), which rescales the update but keeps its
direction, so it hides no token from DAGER. ``EXAMPLE_DEFENSE=name:key=value,...`` (e.g.
``topk:sparsity=0.99`` or ``gaussian:noise_multiplier=0.1,clip_norm=1``) chooses another.
"""

from __future__ import annotations

import os

import task
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from gradleak.flower import defense_mod  # +


def defense_from_env() -> tuple[str, dict[str, float]]:
    """``EXAMPLE_DEFENSE`` (default ``clip_norm:clip_norm=1``) as a name and its parameters."""
    name, _, params = os.environ.get("EXAMPLE_DEFENSE", "clip_norm:clip_norm=1").partition(":")
    pairs = (p.split("=", 1) for p in params.split(",") if p)
    return name, {k: float(v) for k, v in pairs}


NAME, PARAMS = defense_from_env()
app = ClientApp(mods=[defense_mod(NAME, model_fn=task.model_fn, **PARAMS)])  # +


@app.train()
def train(msg: Message, context: Context) -> Message:
    client = context.node_config["partition-id"]
    net = task.model_fn()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict(), strict=False)  # adapters
    x = task.round_batch(client, msg.content["config"]["server-round"])
    loss = task.train_step(net, x)
    # partition-id is reported only so the simulation's ground-truth hook can score the audit.
    metrics = MetricRecord({"train-loss": loss, "num-examples": x.shape[0], "partition-id": client})
    return Message(RecordDict({"arrays": ArrayRecord(task.trainable_state(net)),
                               "metrics": metrics}), reply_to=msg)
