"""Differentiable simulation of a client's local training (the paper's WST case, Sec. 4.1.2).

With the client's E, B and lr granted, the attacker replays mini-batch SGD on its dummy data
through ``torch.func.functional_call`` and compares the simulated model difference with the
shared one. The client's own shuffling is unknown to the attacker, so it uses its own order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from gradleak.fl.client import ClientSetup


def batch_order(setup: ClientSetup, generator: torch.Generator) -> list[torch.Tensor]:
    """The attacker's mini-batch index order: a fresh permutation per epoch."""
    order = []
    for _ in range(setup.local_epochs):
        order += list(torch.randperm(setup.num_samples, generator=generator).split(setup.batch_size))
    return order


def dummy_gradient(model: nn.Module, names: list[str], params: list[torch.Tensor],
                   images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """dL/dW of the dummy batch, kept differentiable in ``images`` (create_graph)."""
    loss = F.cross_entropy(model(images), labels)
    return list(torch.autograd.grad(loss, params, create_graph=True))


def simulated_delta(model: nn.Module, names: list[str], images: torch.Tensor,
                    labels: torch.Tensor, setup: ClientSetup,
                    order: list[torch.Tensor]) -> list[torch.Tensor]:
    """W_U - W_0 after the client's local SGD steps on ``images``, differentiable in ``images``."""
    start = dict(model.named_parameters())
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    params = {n: start[n] for n in names}
    for batch in order:
        logits = functional_call(model, (params, buffers), (images[batch],))
        loss = F.cross_entropy(logits, labels[batch])
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        params = {n: p - setup.lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
    return [params[n] - start[n] for n in names]
