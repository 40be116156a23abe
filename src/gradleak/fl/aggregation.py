"""Server-side aggregation, as pure functions of the clients' uploads (paper App. B iii).

FedAvg moves the global model to the data-weighted mean of the client models,
``W <- sum_k n_k W_k / sum_k n_k = W + sum_k n_k u_k / sum_k n_k`` (``u_k = W_k - W``), and FedSGD
takes one step along the data-weighted mean gradient, ``W <- W - lr * sum_k n_k g_k / sum_k n_k``.
The mean is accumulated in float64 over all clients of a round at once (a running average with
a fixed alpha weights clients wrongly), like Flower's ``aggregate(results)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn


def aggregate(updates: Sequence[Mapping[str, torch.Tensor]],
              weights: Sequence[int | float]) -> dict[str, torch.Tensor]:
    """``sum_k w_k u_k / sum_k w_k`` per tensor name (the names of ``updates[0]``), summed in
    float64 and returned in each tensor's own dtype; ``weights`` are the clients' sample counts."""
    if not updates or len(updates) != len(weights):
        raise ValueError(f"need one weight per update, got {len(updates)} updates and "
                         f"{len(weights)} weights")
    total = sum(weights)
    if not total > 0:
        raise ValueError(f"the weights must sum to > 0, got {total}")
    first = updates[0]
    acc = {name: torch.zeros_like(t, dtype=torch.float64) for name, t in first.items()}
    for w, u in zip(weights, updates, strict=True):
        for name in acc:
            acc[name] += w * u[name].double()
    return {name: (acc[name] / total).to(first[name].dtype) for name in acc}


def server_step(protocol: str, lr: float) -> float:
    """The factor the server applies to the aggregate: 1 for FedAvg's mean model difference,
    ``-lr`` for FedSGD's mean gradient."""
    return -lr if protocol == "fedsgd" else 1.0


def apply_update(model: nn.Module, mean: Mapping[str, torch.Tensor], step: float) -> None:
    """``W <- W + step * mean`` in place, for the parameters named in ``mean`` (BN running
    statistics are not federated)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in mean:
                p.add_(mean[name].to(p), alpha=step)
