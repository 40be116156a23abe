"""The victim client: FedSGD shares one gradient, FedAvg shares a model difference (Sec. 2.1).

FedSGD: one gradient of the mean loss over all N samples.
FedAvg: E local epochs of mini-batch SGD with batch size B and learning rate lr, samples shuffled
from the seed, so U = E * ceil(N / B) local updates; the client shares W_local - W_global.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gradleak.config import ClientConfig


@dataclass(frozen=True)
class ClientSetup:
    """The client's local training details (the paper's level-3 knowledge)."""

    protocol: Literal["fedsgd", "fedavg"]
    local_epochs: int
    batch_size: int
    lr: float
    num_samples: int
    bn_mode: Literal["eval", "train"]

    @classmethod
    def from_config(cls, cfg: ClientConfig, num_samples: int) -> ClientSetup:
        """The setup of a client holding ``num_samples`` samples. One rule for every client: the
        configured batch size (null = all N) is capped at the client's own N, as a client with
        fewer samples than B trains on one batch. (A single-victim scenario refuses B > N before
        any work, in :class:`gradleak.scenario.Scenario`.)"""
        batch = min(cfg.batch_size or num_samples, num_samples)
        if cfg.protocol == "fedsgd":
            return cls("fedsgd", 1, num_samples, cfg.lr, num_samples, cfg.bn_mode)
        return cls("fedavg", cfg.local_epochs, batch, cfg.lr, num_samples, cfg.bn_mode)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    @property
    def local_updates(self) -> int:
        """U = E * ceil(N / B)."""
        return self.local_epochs * self.steps_per_epoch


@dataclass(frozen=True)
class SharedUpdate:
    """What the client sends: per-parameter tensors keyed by parameter name.

    ``kind="gradient"`` holds dL/dW (FedSGD); ``kind="model_delta"`` holds W_local - W_global
    (FedAvg), which points *against* the summed gradients. It holds exactly what a real client
    uploads: the client's BN batch statistics are not part of it (see :class:`ClientRound`).
    """

    kind: Literal["gradient", "model_delta"]
    tensors: dict[str, torch.Tensor]
    num_samples: int

    def gradient_direction(self) -> dict[str, torch.Tensor]:
        """Tensors pointing along the (summed) loss gradient: a model delta is negated."""
        if self.kind == "gradient":
            return self.tensors
        return {k: -v for k, v in self.tensors.items()}

    def replace(self, tensors: dict[str, torch.Tensor]) -> SharedUpdate:
        return SharedUpdate(self.kind, tensors, self.num_samples)


@dataclass(frozen=True)
class ClientRound:
    """One local round of the victim: the update it uploads and, kept apart from it, the per-BN-layer
    batch ``(mean, var)`` it computed. The statistics reach a server only when the threat model
    grants them (level 4), through :func:`gradleak.attacks.observe`."""

    update: SharedUpdate
    bn_statistics: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


def set_bn_mode(model: nn.Module, mode: str, *, dropout: bool = True) -> None:
    """BN layers in ``mode``; dropout active iff ``dropout`` (clients train with it on, while an
    attacker cannot know the client's dropout masks and evaluates without)."""
    model.train(dropout)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train(mode == "train")


def capture_bn_statistics(model: nn.Module, images: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Per BN layer, the (mean, biased var) over batch and space of that layer's input."""
    stats: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        x = inputs[0].detach()
        stats.append((x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
    return stats


def client_update(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  setup: ClientSetup, *, seed: int) -> SharedUpdate:
    """Run the client's local training on a copy of ``model``; ``images [N, C, H, W]``."""
    local = copy.deepcopy(model)
    set_bn_mode(local, setup.bn_mode)
    names = [n for n, p in local.named_parameters() if p.requires_grad]
    params = [p for p in local.parameters() if p.requires_grad]
    if setup.protocol == "fedsgd":
        loss = F.cross_entropy(local(images), labels)
        grads = torch.autograd.grad(loss, params)
        tensors = {n: g.detach().clone() for n, g in zip(names, grads, strict=True)}
        return SharedUpdate("gradient", tensors, setup.num_samples)

    start = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(params, lr=setup.lr)
    for _ in range(setup.local_epochs):
        order = torch.randperm(setup.num_samples, generator=generator)
        for batch in order.split(setup.batch_size):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(local(images[batch]), labels[batch]).backward()
            optimizer.step()
    tensors = {n: (p.detach() - s) for n, p, s in zip(names, params, start, strict=True)}
    return SharedUpdate("model_delta", tensors, setup.num_samples)


def client_round(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 setup: ClientSetup, *, seed: int) -> ClientRound:
    """:func:`client_update` plus the BN batch statistics of the client's first forward pass."""
    local = copy.deepcopy(model)
    set_bn_mode(local, setup.bn_mode)
    stats = capture_bn_statistics(local, images)
    return ClientRound(client_update(model, images, labels, setup, seed=seed), stats)
