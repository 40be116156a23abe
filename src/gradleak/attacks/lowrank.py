"""Large linear layers' weight gradients kept as their batch factors (the MLP's first layer).

For ``y = x W^T + b`` on a batch, ``dL/dW = g^T x`` with ``g = dL/dy [B, out]`` and
``x [B, in]``: rank <= B. The cosine distance needs only ``<dW, O> = sum((g O) * x)`` and
``|dW|^2 = sum((g g^T) * (x x^T))``, so the ``out x in`` gradient is never materialised and the
double backward runs through two ``B x out x in`` products instead of several element-wise passes
over the layer (on the 3072-512 MLP layer the gradient distance and its backward dominated an
attack iteration; ``benchmarks/attack_speed.py``). Used for the cosine distance only: an L2
distance from factors would be ``|d|^2 - 2<d, o> + |o|^2``, which cancels catastrophically near a
match in float32.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

MIN_WEIGHTS = 1 << 18
"""Only layers with at least this many weights (262 144) are factored: below it the dense
gradient is cheap and the factored one's extra kernel launches cost more than they save."""


@dataclass
class LowRankGradient:
    """The weight gradient ``g^T x`` of a linear layer, as ``g [B, out]`` and ``x [B, in]``."""

    g: torch.Tensor
    x: torch.Tensor

    def dot(self, other: torch.Tensor) -> torch.Tensor:
        """``<g^T x, other>`` for a dense ``other [out, in]``."""
        return ((self.g @ other) * self.x).sum()

    def squared_norm(self) -> torch.Tensor:
        return ((self.g @ self.g.T) * (self.x @ self.x.T)).sum()

    def dense(self) -> torch.Tensor:
        return self.g.T @ self.x


def factorable(model: nn.Module, names: list[str], chosen: list[int], num_samples: int,
               input_shape: tuple[int, ...]) -> dict[int, nn.Linear]:
    """The chosen weights (index into ``chosen``) worth factoring: of an ``nn.Linear`` called
    once per forward on a 2-D input, with >= :data:`MIN_WEIGHTS` weights and rank ``B`` well below
    both sides (``B (in + out) <= in out / 8``). A probe forward pass checks the calls."""
    modules = {f"{n}.weight" if n else "weight": n for n, m in model.named_modules()
               if isinstance(m, nn.Linear)}
    by_name = dict(model.named_modules())
    candidates = {}
    for k, i in enumerate(chosen):
        m = by_name[modules[names[i]]] if names[i] in modules else None
        if not isinstance(m, nn.Linear) or m.weight.numel() < MIN_WEIGHTS:
            continue
        if num_samples * (m.in_features + m.out_features) * 8 > m.in_features * m.out_features:
            continue
        candidates[k] = modules[names[i]]
    if not candidates:
        return {}
    # The probe runs on a copy: a train-mode BatchNorm would update the attacker's statistics.
    probe = copy.deepcopy(model)
    probe_modules = dict(probe.named_modules())
    calls: dict[int, list[int]] = {k: [] for k in candidates}
    for k, name in candidates.items():
        probe_modules[name].register_forward_hook(lambda _m, inp, _out, k=k: calls[k].append(inp[0].ndim))
    with torch.no_grad():
        device = next(model.parameters()).device
        probe(torch.zeros(num_samples, *input_shape, device=device))
    return {k: by_name[name] for k, name in candidates.items() if calls[k] == [2]}


def factored_gradients(model: nn.Module, params: list[torch.Tensor], lowrank: dict[int, nn.Linear],
                       loss_of) -> list[torch.Tensor | LowRankGradient]:
    """``dL/dparams`` with ``create_graph``, the ``lowrank`` entries as :class:`LowRankGradient`.

    ``loss_of()`` runs the forward pass and returns the loss; hooks capture the factored layers'
    inputs and outputs during it.
    """
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(k: int):
        def capture(_m, inp, out):
            captured[k] = (inp[0], out)
        return capture

    handles = [m.register_forward_hook(hook(k)) for k, m in lowrank.items()]
    try:
        loss = loss_of()
    finally:
        for h in handles:
            h.remove()
    wrt = [captured[k][1] if k in lowrank else p for k, p in enumerate(params)]
    grads = torch.autograd.grad(loss, wrt, create_graph=True)
    return [LowRankGradient(g, captured[k][0]) if k in lowrank else g
            for k, g in enumerate(grads)]
