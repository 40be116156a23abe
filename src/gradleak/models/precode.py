"""PRECODE (Scheliga et al., "PRECODE - A Generic Model Extension to Prevent Deep Gradient
Leakage", WACV 2022): a variational bottleneck inserted before the output layer.

The bottleneck reads the features ``h [B, d]`` the output layer would read, encodes them to
``(mu, sigma) = (s[:, :K], softplus(s[:, K:]))`` with ``s = encoder(h) [B, 2K]``, samples
``z = mu + sigma * eps`` (eps ~ N(0, I), fresh every forward) and decodes ``z [B, K]`` back to
``[B, d]``. Its KL divergence to N(0, I), ``beta * mean_b(-0.5 * sum_k (1 + 2 log sigma - mu^2 -
sigma^2)) / ln 2`` (in bits, as published), is added to the client's training loss (see
:func:`gradleak.models.base.forward_with_penalty`). Defaults from the published
``src/VariationalBottleneck.py`` (github.com/dAI-SY-Group/PRECODE): K = 256, beta = 1e-3.

One deliberate difference: the published module samples in eval mode too; here eval mode uses
``mu`` (the usual variational-bottleneck inference, and what a deterministic test accuracy
needs). Clients train in train mode (sampling); the attacker evaluates without it, as it cannot
know the client's eps (like dropout masks).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gradleak.errors import GradleakError


class VariationalBottleneck(nn.Module):
    """PRECODE's bottleneck: ``[B, d] -> encoder [B, 2K] -> z [B, K] -> decoder [B, d]``
    (inputs of any shape ``[B, ...]`` are flattened and the output takes their shape)."""

    def __init__(self, features: int, size: int = 256, beta: float = 1e-3) -> None:
        super().__init__()
        self.size, self.beta = size, beta
        self.encoder = nn.Linear(features, 2 * size)
        self.decoder = nn.Linear(size, features)

    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, sigma)``, each ``[B, K]``, of the inputs ``x [B, ...]``."""
        s = self.encoder(x.flatten(1))
        return s[:, :self.size], F.softplus(s[:, self.size:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, sigma = self.statistics(x)
        z = mu + sigma * torch.randn_like(sigma) if self.training else mu
        return self.decoder(z).view(x.shape)

    def penalty(self, x: torch.Tensor) -> torch.Tensor:
        """``beta`` times the KL divergence (bits) of ``q(z | x)`` to N(0, I), batch mean."""
        mu, sigma = self.statistics(x)
        kl = -0.5 * (1 + 2 * sigma.log() - mu.pow(2) - sigma.pow(2)).sum(1).mean()
        return self.beta * kl / math.log(2)


def insert_precode(net: nn.Module, size: int = 256, beta: float = 1e-3) -> nn.Module:
    """``net`` with a :class:`VariationalBottleneck` in front of its output layer (its last
    ``nn.Linear``, replaced in place by ``Sequential(bottleneck, linear)``)."""
    linear = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise GradleakError(f"model.precode=true needs a model whose output layer is nn.Linear; "
                            f"{type(net).__name__} has none")
    name, out = linear[-1]
    parent_name, _, child = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    block = nn.Sequential(VariationalBottleneck(out.in_features, size, beta), out)
    if not name:  # the network is the output layer itself
        return block
    setattr(parent, child, block)
    return net


def find_bottleneck(model: nn.Module) -> tuple[str, VariationalBottleneck]:
    """Name and module of the model's (first) PRECODE bottleneck."""
    for name, module in model.named_modules():
        if isinstance(module, VariationalBottleneck):
            return name, module
    raise GradleakError("this model has no PRECODE bottleneck; set model.precode=true")
