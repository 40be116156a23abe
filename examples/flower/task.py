"""The example's model and data: a small CNN on the scikit-image photos, split non-IID.

Everything a Flower app usually has in its ``task.py``; nothing here knows about gradleak except
that the data comes from gradleak's offline dataset registry (``data.dataset=skimage``: 10 photos,
64 crops each; ``fashion_mnist`` when the Debian package is installed).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

from gradleak.config import load_config
from gradleak.data import build_dataset
from gradleak.fl.partition import partition_indices

DATASET = os.environ.get("EXAMPLE_DATASET", "skimage")  # or fashion_mnist, if installed
RESOLUTION = 16
NUM_CLIENTS = 4
BATCH = 1  # samples per client update: one SGD step on one fresh sample each round (FedSGD)
LR = 0.05
ALPHA = 0.3  # Dirichlet label skew: small = each client sees few classes


@functools.cache
def dataset(split: str = "train"):
    cfg = load_config(None, [f"data.dataset={DATASET}", f"data.resolution={RESOLUTION}",
                             f"data.split={split}"])
    return build_dataset(cfg.data)


@functools.cache
def partitions() -> list[list[int]]:
    """Each client's train indices (non-IID: Dirichlet(ALPHA) label skew, seed 0)."""
    return partition_indices(dataset().targets(), NUM_CLIENTS, scheme="dirichlet", alpha=ALPHA, seed=0)


class Net(nn.Module):
    """Two 3x3 convolutions and a linear layer; takes images in [0, 1], [B, C, 16, 16]."""

    def __init__(self, channels: int | None = None, classes: int | None = None) -> None:
        super().__init__()
        data = dataset()
        channels, classes = channels or data.channels, classes or data.num_classes
        self.conv1 = nn.Conv2d(channels, 12, 3, padding=1)
        self.conv2 = nn.Conv2d(12, 24, 3, stride=2, padding=1)
        self.fc = nn.Linear(24 * (RESOLUTION // 2) ** 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def init_model(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def round_batch(partition: int, server_round: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mini-batch client ``partition`` trains on in ``server_round`` (reproducible)."""
    part = partitions()[partition]
    gen = torch.Generator().manual_seed(1000 * server_round + partition)
    pick = torch.randperm(len(part), generator=gen)[:BATCH].tolist()
    data = dataset()
    images, labels = zip(*(data[part[i]] for i in pick), strict=True)
    return torch.stack(images), torch.tensor(labels)


def train_step(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """One SGD step on the batch; returns the loss before the step."""
    loss = F.cross_entropy(net(images), labels)
    net.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in net.parameters():
            p -= LR * p.grad
    return float(loss.detach())


def accuracy(net: nn.Module, split: str = "test") -> float:
    data = dataset(split)
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor(data.targets())
    with torch.no_grad():
        return float((net(images).argmax(1) == labels).float().mean())
