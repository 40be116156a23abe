"""Differentiable simulation of a client's local training (the paper's WST case, Sec. 4.1.2).

With the client's training details granted (level 3: E, B, lr, optimiser with its momentum /
Adam moments / weight decay, label smoothing), the attacker replays the client's local steps on
its dummy data through ``torch.func.functional_call`` and compares the simulated model
difference with the shared one. What the attacker cannot know is replayed with its own choices:
the client's shuffling (its own order) and data augmentation (none: random crops and flips are
drawn per sample from the client's private generator, so the replay uses the plain images).

Replayed with the true images and order, the simulation reproduces the client's update to float
precision, except where a parameter's true gradient is exactly zero (a conv bias right before
train-mode BatchNorm): Adam turns the float noise there into steps of about +-lr on both sides.

A user-supplied local-training function (``ClientSetup.local_train``) is replayed by calling it on
the attacker's parameters and dummy images; it must be differentiable in the images
(``torch.func`` style), else the attack refuses with one line.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from gradleak.errors import GradleakError
from gradleak.fl.client import ClientSetup
from gradleak.fl.training import OptimizerState, functional_step


class ReplayOrder(list):
    """The attacker's batch order; ``seed`` seeds the generator a user ``local_train`` gets."""

    seed: int = 0


def batch_order(setup: ClientSetup, generator: torch.Generator) -> list[torch.Tensor]:
    """The attacker's mini-batch index order: a fresh permutation per epoch."""
    order = ReplayOrder()
    for _ in range(setup.local_epochs):
        order += list(torch.randperm(setup.num_samples, generator=generator).split(setup.batch_size))
    if setup.local_train is not None:  # drawn only then, so the built-in replay's stream is as before
        order.seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return order


def dummy_gradient(model: nn.Module, names: list[str], params: list[torch.Tensor],
                   images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """dL/dW of the dummy batch, kept differentiable in ``images`` (create_graph)."""
    loss = F.cross_entropy(model(images), labels)
    return list(torch.autograd.grad(loss, params, create_graph=True))


def simulated_delta(model: nn.Module, names: list[str], images: torch.Tensor,
                    labels: torch.Tensor, setup: ClientSetup,
                    order: list[torch.Tensor]) -> list[torch.Tensor]:
    """W_U - W_0 after the client's local steps on ``images`` (in ``order``), differentiable in
    ``images``; ``labels`` are class indices ``[N]`` or soft labels ``[N, K]``."""
    if setup.local_train is not None:
        return _replay_user_training(model, names, images, labels, setup, order)
    start = dict(model.named_parameters())
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    params = [start[n] for n in names]
    state = OptimizerState()
    for batch in order:
        logits = functional_call(model, (dict(zip(names, params, strict=True)), buffers),
                                 (images[batch],))
        loss = F.cross_entropy(logits, labels[batch], label_smoothing=setup.label_smoothing)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        params = functional_step(params, list(grads), state, optimizer=setup.optimizer,
                                 lr=setup.lr, momentum=setup.momentum, nesterov=setup.nesterov,
                                 weight_decay=setup.weight_decay)
    return [p - start[n] for n, p in zip(names, params, strict=True)]


# Functions already seen to be differentiable in the images (checked once, on first use).
_DIFFERENTIABLE: weakref.WeakSet = weakref.WeakSet()

_HOW = ("write it with torch.func.functional_call(model, (params, buffers), ...) and "
        "torch.autograd.grad(..., create_graph=True), returning the new params")


def _replay_user_training(model: nn.Module, names: list[str], images: torch.Tensor,
                          labels: torch.Tensor, setup: ClientSetup,
                          order: list[torch.Tensor]) -> list[torch.Tensor]:
    fn = setup.local_train
    who = f"client local_train {getattr(fn, '__name__', type(fn).__name__)}"
    start = dict(model.named_parameters())
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    generator = torch.Generator().manual_seed(getattr(order, "seed", 0))
    try:
        out = fn(model, {n: start[n] for n in names}, buffers, images, labels, generator)
    except GradleakError:
        raise
    except RuntimeError as exc:  # e.g. in-place optimiser steps on parameters that need grad
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GradleakError(f"{who} cannot be replayed differentiably by the WST attack "
                            f"({first}); {_HOW}") from None
    missing = [n for n in names if not isinstance(out, dict) or n not in out]
    if missing:
        raise GradleakError(f"{who} must return a dict of every trained parameter; missing "
                            f"{missing[0]!r}")
    delta = [out[n] - start[n] for n in names]
    if images.requires_grad and torch.is_grad_enabled():
        _check_differentiable(fn, who, delta, images)
    return delta


def _check_differentiable(fn, who: str, delta: list[torch.Tensor], images: torch.Tensor) -> None:
    with contextlib.suppress(TypeError):
        if fn in _DIFFERENTIABLE:
            return
    connected = [d for d in delta if d.requires_grad]
    grad = None
    if connected:
        total = sum(d.sum() for d in connected)
        (grad,) = torch.autograd.grad(total, [images], retain_graph=True, allow_unused=True)
    if grad is None:
        raise GradleakError(f"{who} is not differentiable in the client's images, so the WST "
                            f"attack (threat.knows_client_config=true) cannot replay it; {_HOW}")
    with contextlib.suppress(TypeError):  # not weak-referenceable: checked on every call
        _DIFFERENTIABLE.add(fn)
