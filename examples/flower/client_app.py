"""The ClientApp: a plain Flower client plus gradleak's two client mods (the lines marked +).

Mods wrap the app from the outside in: the first mod in the list is the last to see the reply.
Here the client first compresses its update (8-bit QSGD, a defense that barely hides anything),
then the leakage guard attacks that update with the server's knowledge and, if a sample would be
reconstructed (PSNR >= 18 dB and LPIPS <= 0.1), sparsifies it to 10 % and checks again.
"""

from __future__ import annotations

import task
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from gradleak.flower import defense_mod, leakage_guard_mod  # +


def guard_data(msg: Message, context: Context):  # +  the samples this round's update comes from
    return task.round_batch(context.node_config["partition-id"],
                            msg.content["config"]["server-round"])


app = ClientApp(mods=[
    leakage_guard_mod(model_fn=task.Net, data_fn=guard_data, attack="ig", budget=300,  # +
                      threshold=0.0, on_leak="defend", fallback={"name": "topk", "sparsity": 0.9},
                      config=["client.protocol=fedsgd", f"client.lr={task.LR}"]),
    defense_mod("qsgd", bits=8),  # +
])


@app.train()
def train(msg: Message, context: Context) -> Message:
    partition = context.node_config["partition-id"]
    net = task.Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    images, labels = task.round_batch(partition, msg.content["config"]["server-round"])
    loss = task.train_step(net, images, labels)
    # partition-id is reported only so the simulation's ground-truth hook can score the audit.
    metrics = MetricRecord({"train-loss": loss, "num-examples": len(labels),
                            "partition-id": partition})
    return Message(RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics}),
                   reply_to=msg)
