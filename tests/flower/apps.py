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
