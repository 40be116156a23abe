"""Client-side DP-SGD (Abadi et al. 2016) for the federated clients, with opacus' RDP accountant.

Each mini-batch gradient is the sum of per-sample gradients (``torch.func.vmap(grad)``; a loop for
text models), each clipped to L2 norm C = ``max_grad_norm``, plus N(0, (noise_multiplier * C)^2)
noise, divided by the batch size B. Every step is recorded with sample rate B / N; a client's
epsilon is read at ``delta``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from gradleak.errors import GradleakError
from gradleak.fl.client import ClientRound, ClientSetup, capture_bn_statistics, set_bn_mode
from gradleak.update import SharedUpdate


@dataclass
class DPSettings:
    """Client-side DP-SGD (Abadi et al. 2016): per-sample L2 clipping to ``max_grad_norm`` and
    N(0, (noise_multiplier * max_grad_norm)^2) noise on each summed mini-batch gradient."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float = 1e-5


def dp_settings(cfg: Any) -> DPSettings | None:
    """The DP-SGD training a ``Config`` asks for: ``defense.name=dpsgd`` or ``fl.dp=true`` (the
    settings are ``defense.dp_*``, which the ``fl.dp_*`` keys alias); None without DP."""
    if cfg.defense.name != "dpsgd" and not cfg.fl.dp:
        return None
    d = cfg.defense
    return DPSettings(d.dp_noise_multiplier, d.dp_max_grad_norm, d.dp_delta)


def make_accountant():
    """A fresh opacus RDP accountant."""
    from opacus.accountants import RDPAccountant

    return RDPAccountant()


def epsilon(accountant, delta: float) -> float:
    """The accountant's epsilon at ``delta``; inf when it is unbounded or cannot be computed."""
    try:
        eps = float(accountant.get_epsilon(delta))
    except (ValueError, ZeroDivisionError, OverflowError):
        return math.inf
    return eps if math.isfinite(eps) else math.inf


def _check_bn(local: nn.Module, setup: ClientSetup) -> None:
    if setup.bn_mode == "train" and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                        for m in local.modules()):
        raise GradleakError("DP-SGD (defense.name=dpsgd or fl.dp=true) needs per-sample "
                            "gradients, which train-mode BatchNorm mixes; set "
                            "client.bn_mode=eval or model.norm=group/none")


def _per_sample_gradients(local: nn.Module, sample_loss):
    """``fn(params, x [B, ...], y [B, ...]) -> {name: [B, ...]}``: vmapped, except for text
    models, whose Hugging Face attention masks branch on the mask's values (``padding_mask.all()``),
    which vmap cannot trace; they take one sample at a time (same gradients, B small)."""
    one = grad(sample_loss)
    if getattr(local, "modality", None) != "text":
        return vmap(one, in_dims=(None, 0, 0), randomness="different")

    def looped(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        rows = [one(p, x[i], y[i]) for i in range(x.shape[0])]
        return {n: torch.stack([r[n] for r in rows]) for n in p}

    return looped


def dp_client_update(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     setup: ClientSetup, dp: DPSettings, *, seed: int,
                     accountant=None) -> SharedUpdate:
    """:func:`~gradleak.fl.client.client_update` with DP-SGD: per-sample gradients of
    ``images [N, C, H, W]``, each clipped to L2 norm ``dp.max_grad_norm``, summed, plus Gaussian
    noise of std ``noise_multiplier * max_grad_norm``, divided by the batch size. Same batch
    order as ``client_update`` for the same ``seed``; FedSGD is one such step over all N samples.
    Each step is recorded in ``accountant`` (opacus RDP) with sample rate B / N.
    """
    local = copy.deepcopy(model)
    set_bn_mode(local, setup.bn_mode)
    _check_bn(local, setup)
    if setup.mix != "none":
        raise GradleakError(f"DP-SGD (defense.name=dpsgd or fl.dp=true) does not support "
                            f"client.mix={setup.mix}: a mixed sample's gradient is not one sample's")
    if any(callable(getattr(m, "penalty", None)) for m in local.modules()):
        raise GradleakError("DP-SGD (defense.name=dpsgd or fl.dp=true) does not support "
                            "model.precode=true: its per-sample gradients would drop the KL term")
    names = [n for n, p in local.named_parameters() if p.requires_grad]
    params = {n: p.detach().clone() for n, p in local.named_parameters() if p.requires_grad}
    start = {n: p.clone() for n, p in params.items()}
    buffers = dict(local.named_buffers())

    def sample_loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(local, (p, buffers), (x[None],)), y[None])

    per_sample = _per_sample_gradients(local, sample_loss)
    order_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator().manual_seed(seed + 7)
    sigma = dp.noise_multiplier * dp.max_grad_norm

    def noisy_mean(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        g = per_sample(params, images[batch], labels[batch])
        norms = torch.linalg.vector_norm(torch.stack([g[n].flatten(1).norm(dim=1) for n in names]),
                                         dim=0)
        factor = (dp.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        if accountant is not None:
            accountant.step(noise_multiplier=dp.noise_multiplier,
                            sample_rate=setup.batch_size / setup.num_samples)
        out = {}
        for n in names:
            summed = torch.einsum("b,b...->...", factor, g[n])
            noise = torch.randn(summed.shape, generator=noise_gen).to(summed)
            out[n] = (summed + sigma * noise) / len(batch)
        return out

    if setup.protocol == "fedsgd":
        return SharedUpdate("gradient", noisy_mean(torch.arange(setup.num_samples)),
                            setup.num_samples)
    for _ in range(setup.local_epochs):
        order = torch.randperm(setup.num_samples, generator=order_gen)
        for batch in order.split(setup.batch_size):
            step = noisy_mean(batch)
            params = {n: params[n] - setup.lr * step[n] for n in names}
    return SharedUpdate("model_delta", {n: params[n] - start[n] for n in names},
                        setup.num_samples)


def dp_client_round(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    setup: ClientSetup, dp: DPSettings, *, seed: int) -> ClientRound:
    """:func:`dp_client_update` plus the BN batch statistics of the first forward pass (as
    :func:`~gradleak.fl.client.client_round`)."""
    local = copy.deepcopy(model)
    set_bn_mode(local, setup.bn_mode)
    stats = capture_bn_statistics(local, images)
    return ClientRound(dp_client_update(model, images, labels, setup, dp, seed=seed), stats)
