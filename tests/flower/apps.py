"""Tiny Flower pieces shared by the Flower tests (importable by the simulation's workers).

A 16 px MLP (gradleak's ``mlp`` model, hidden 32) on the embedded scikit-image photos; client k
holds one photo-crop per class ``k`` (non-IID) and does one full-batch SGD step per round
(FedSGD as a Flower ClientApp: the reply is W - lr * grad).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.metadata import Metadata
from torch import nn

from gradleak.config import load_config
from gradleak.data import build_dataset
from gradleak.data.sampling import select_victim_samples
from gradleak.models import build_model
from gradleak.provenance import seed_everything
from gradleak.scenario import SeedStreams

RES = 16
LR = 0.1
OVERRIDES = ["data.dataset=skimage", f"data.resolution={RES}", "model.name=mlp", "model.hidden=[32]",
             "client.protocol=fedsgd", f"client.lr={LR}", "seed=0"]


def base_config(extra: list[str] = ()):
    return load_config(None, OVERRIDES + list(extra))


def make_model() -> nn.Module:
    """The global model `gradleak attack` builds for OVERRIDES (same seed, same weights)."""
    cfg = base_config()
    data = build_dataset(cfg.data)
    seed_everything(cfg.seed)
    return build_model(cfg.model, num_classes=data.num_classes, channels=data.channels,
                       resolution=data.resolution, mean=data.mean, std=data.std)


def client_data(partition: int, num_samples: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Client ``partition``'s samples: the victim `gradleak attack` picks with seed=partition."""
    cfg = base_config([f"data.num_samples={num_samples}", f"seed={partition}"])
    seed = SeedStreams.from_seed(cfg.seed).victim  # as Scenario picks its victim
    images, labels, _ = select_victim_samples(build_dataset(cfg.data), cfg.data, seed=seed)
    return images, labels


def partition_of(ctx: Context) -> int:
    return int(ctx.node_config.get("partition-id", ctx.node_id % 1000))


def data_fn(msg: Message, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    return client_data(partition_of(ctx))


def train(msg: Message, ctx: Context) -> Message:
    """One full-batch SGD step on the client's samples (FedSGD), reply = new weights."""
    model = make_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    images, labels = data_fn(msg, ctx)
    loss = F.cross_entropy(model(images), labels)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads, strict=True):
            p.sub_(LR * g)
    metrics = MetricRecord({"num-examples": len(labels), "train-loss": float(loss),
                            "partition-id": partition_of(ctx)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}),
                   reply_to=msg)


# --- building messages by hand (no SuperLink) ---------------------------------------------------


def train_message(arrays: ArrayRecord, node_id: int, server_round: int = 1, *,
                  message_type: str = "train") -> Message:
    meta = Metadata(run_id=1, message_id=f"m{node_id}-{server_round}", src_node_id=0,
                    dst_node_id=node_id, reply_to_message_id="", group_id=str(server_round),
                    created_at=time.time(), ttl=3600.0, message_type=message_type)
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})})
    return Message(metadata=meta, content=content)


def context(node_id: int, partition: int) -> Context:
    return Context(run_id=1, node_id=node_id, node_config={"partition-id": partition},
                   state=RecordDict(), run_config={})


# --- a tiny BN CNN (BN running statistics in the reply) -----------------------------------------


class BNNet(nn.Module):
    """Conv(3->4) + BatchNorm2d + ReLU + Conv(4->4) + BatchNorm2d + linear head, at 16 px."""

    def __init__(self, momentum: float | None = 0.1, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, momentum=momentum), nn.ReLU(),
            nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4, momentum=momentum), nn.ReLU())
        self.head = nn.Linear(4 * (RES // 2) ** 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def make_bn_model(momentum: float | None = 0.1) -> nn.Module:
    torch.manual_seed(0)
    net = BNNet(momentum)
    with torch.no_grad():  # running statistics away from their (0, 1) init, as after some rounds
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(7)
    return net


def bn_train_steps(msg: Message, images: torch.Tensor, labels: torch.Tensor, *, steps: int = 1,
                   batch: int | None = None, momentum: float | None = 0.1
                   ) -> tuple[Message, list[list[tuple[torch.Tensor, torch.Tensor]]]]:
    """``steps`` SGD steps in train mode (BN updates its running statistics) on mini-batches of
    ``batch`` samples (cycling); returns the reply and, per step, each BN layer's real batch
    (mean, biased var) as the engine captures them."""
    from gradleak.fl.client import capture_bn_statistics

    model = make_bn_model(momentum)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    model.train()
    batch = batch or len(labels)
    seen = []
    for step in range(steps):
        idx = torch.arange(step * batch, (step + 1) * batch) % len(labels)
        x, y = images[idx], labels[idx]
        frozen = make_bn_model(momentum)  # the step's statistics, without moving the buffers twice
        frozen.load_state_dict(model.state_dict())
        seen.append(capture_bn_statistics(frozen.train(), x))
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads, strict=True):
                p.sub_(LR * g)
    metrics = MetricRecord({"num-examples": len(labels), "partition-id": 0})
    reply = Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}),
                    reply_to=msg)
    return reply, seen


def bn_train(msg: Message, ctx: Context) -> Message:
    """FedSGD with BN in train mode: one full-batch step on the client's samples."""
    images, labels = data_fn(msg, ctx)
    return bn_train_steps(msg, images, labels)[0]


NODES = {101: 0, 202: 1}  # node id -> partition (client data)


class StubGrid:
    """What FedAvg.configure_train asks of a Grid: the connected node ids."""

    def get_node_ids(self):
        return list(NODES)
