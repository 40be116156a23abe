"""The victim client: FedSGD shares one gradient, FedAvg shares a model difference (Sec. 2.1).

FedSGD: one gradient of the mean loss over all N samples.
FedAvg: E local epochs of mini-batch steps with batch size B and learning rate lr (SGD with
optional momentum / Nesterov / weight decay, Adam or AdamW: :mod:`gradleak.fl.training`), samples
shuffled and augmented from the client's own seed, so U = E * ceil(N / B) local updates; the
client shares W_local - W_global. BatchNorm trains in ``bn_mode`` (``auto``: train for FedAvg,
as ``model.train()`` does, eval for FedSGD). Instead of the built-in loop, an API user may give
their own ``local_train`` function (see :data:`LocalTrain`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gradleak.config import ClientConfig
from gradleak.errors import GradleakError
from gradleak.fl import training
from gradleak.fl.mixing import MixPlan, check_mixing, draw_plan, encode
from gradleak.fl.training import AUGMENTATIONS, OPTIMIZERS
from gradleak.models.base import forward_with_penalty
from gradleak.update import SharedUpdate

# A user's own local training, written functionally so a WST attacker can differentiate through
# it: ``local_train(model, params, buffers, images, labels, generator) -> new params`` (dicts
# keyed by parameter / buffer name; steps via ``torch.func.functional_call`` and
# ``torch.autograd.grad(..., create_graph=True)``; randomness only from ``generator``).
LocalTrain = Callable[..., dict[str, torch.Tensor]]
BN_AUTO = {"fedsgd": "eval", "fedavg": "train"}


def resolve_bn_mode(mode: str, protocol: str) -> str:
    """``client.bn_mode`` as trained: ``auto`` is train for FedAvg, eval for FedSGD."""
    return BN_AUTO.get(protocol, "eval") if mode == "auto" else mode


@dataclass(frozen=True)
class ClientSetup:
    """The client's local training details (the paper's level-3 knowledge).

    ``bn_mode="auto"`` resolves per protocol on construction (train for FedAvg, eval for FedSGD).
    """

    protocol: Literal["fedsgd", "fedavg"]
    local_epochs: int
    batch_size: int
    lr: float
    num_samples: int
    bn_mode: Literal["auto", "eval", "train"] = "auto"
    optimizer: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    augment: str = "none"
    label_smoothing: float = 0.0
    mix: str = "none"  # MixUp / InstaHide (gradleak.fl.mixing)
    mix_k: int = 4
    mix_lower: float = 0.0
    mix_upper: float = 0.65
    local_train: LocalTrain | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bn_mode", resolve_bn_mode(self.bn_mode, self.protocol))
        check_training(self)

    @classmethod
    def from_config(cls, cfg: ClientConfig, num_samples: int, *,
                    local_train: LocalTrain | None = None) -> ClientSetup:
        """The setup of a client holding ``num_samples`` samples. One rule for every client: the
        configured batch size (null = all N) is capped at the client's own N, as a client with
        fewer samples than B trains on one batch. (A single-victim scenario refuses B > N before
        any work, in :class:`gradleak.scenario.Scenario`.) ``local_train`` replaces the built-in
        FedAvg loop (API only)."""
        batch = min(cfg.batch_size or num_samples, num_samples)
        details = {"bn_mode": cfg.bn_mode, "optimizer": cfg.optimizer, "momentum": cfg.momentum,
                   "nesterov": cfg.nesterov, "weight_decay": cfg.weight_decay,
                   "augment": cfg.augment, "label_smoothing": cfg.label_smoothing,
                   "mix": cfg.mix, "mix_k": cfg.mix_k, "mix_lower": cfg.mix_lower,
                   "mix_upper": cfg.mix_upper, "local_train": local_train}
        if cfg.protocol == "fedsgd":
            return cls("fedsgd", 1, num_samples, cfg.lr, num_samples, **details)
        return cls("fedavg", cfg.local_epochs, batch, cfg.lr, num_samples, **details)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    @property
    def local_updates(self) -> int:
        """U = E * ceil(N / B)."""
        return self.local_epochs * self.steps_per_epoch


@dataclass(frozen=True)
class ClientRound:
    """One local round of the victim: the update it uploads and, kept apart from it, the per-BN-layer
    batch ``(mean, var)`` it computed. The statistics reach a server only when the threat model
    grants them (level 4), through :func:`gradleak.attacks.observe`."""

    update: SharedUpdate
    bn_statistics: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    mixing: list[MixPlan] = field(default_factory=list)  # client.mix: one plan per local epoch


def check_training(setup: ClientSetup) -> None:
    """Refuse values and combinations that would be silently ignored (one line each)."""
    if setup.bn_mode not in ("eval", "train"):
        raise GradleakError(f"bad value {setup.bn_mode!r} for client.bn_mode; allowed: auto, eval, "
                            "train")
    for key, value, allowed in (("optimizer", setup.optimizer, OPTIMIZERS),
                                ("augment", setup.augment, AUGMENTATIONS)):
        if value not in allowed:
            raise GradleakError(f"bad value {value!r} for client.{key}; allowed: {', '.join(allowed)}")
    if not 0.0 <= setup.label_smoothing < 1.0:
        raise GradleakError(f"bad value {setup.label_smoothing} for client.label_smoothing: "
                            "must be in [0, 1)")
    if setup.momentum < 0 or setup.weight_decay < 0:
        raise GradleakError("client.momentum and client.weight_decay must be >= 0")
    changed = [k for k, default in (("optimizer", "sgd"), ("momentum", 0.0), ("nesterov", False),
                                    ("weight_decay", 0.0)) if getattr(setup, k) != default]
    if setup.protocol == "fedsgd" and (changed or setup.local_train is not None):
        what = f"client.{changed[0]}" if changed else "a local_train function"
        raise GradleakError(f"{what} needs client.protocol=fedavg: a FedSGD client shares its "
                            "plain gradient and the server applies the optimiser")
    if setup.optimizer != "sgd" and (setup.momentum or setup.nesterov):
        raise GradleakError(f"client.momentum / client.nesterov apply to client.optimizer=sgd, "
                            f"not {setup.optimizer} (its moments use betas 0.9/0.999)")
    if setup.nesterov and not setup.momentum:
        raise GradleakError("client.nesterov=true needs client.momentum > 0")
    check_mixing(setup.mix, setup.mix_k, setup.mix_lower, setup.mix_upper, setup.num_samples)
    if setup.mix != "none" and setup.local_train is not None:
        raise GradleakError(f"client.mix={setup.mix} is gradleak's own training loop; a "
                            "local_train function must do its own mixing")


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
                  setup: ClientSetup, *, seed: int, plans: list[MixPlan] | None = None
                  ) -> SharedUpdate:
    """Run the client's local training on a copy of ``model``; ``images [N, C, H, W]``.

    ``seed`` seeds the client's own shuffling, augmentation and mixing (never shared with the
    attack); ``plans``: its :func:`mixing_plans` when the caller already drew them.
    """
    if plans is None:
        plans = mixing_plans(setup, tuple(images.shape[1:]), seed=seed)
    local = copy.deepcopy(model)
    set_bn_mode(local, setup.bn_mode)
    names = [n for n, p in local.named_parameters() if p.requires_grad]
    try:
        if setup.protocol == "fedsgd":
            tensors = local_gradient(local, names, images, labels, setup, seed=seed, plans=plans)
            return SharedUpdate("gradient", tensors, setup.num_samples)
        tensors = local_training(local, names, images, labels, setup, seed=seed, plans=plans)
    except ValueError as exc:  # torch's BatchNorm on a single value per channel
        if "more than 1 value per channel" not in str(exc):
            raise
        raise GradleakError(f"client.bn_mode={setup.bn_mode} (FedAvg's default) cannot train this "
                            f"model on batches of {setup.batch_size}: a BatchNorm layer sees one "
                            "value per channel; set client.bn_mode=eval or client.batch_size >= 2"
                            ) from None
    return SharedUpdate("model_delta", tensors, setup.num_samples)


def client_generators(seed: int) -> tuple[torch.Generator, torch.Generator]:
    """The client's private generators: (batch order, augmentation). Separate streams, so the
    batch order of a seed does not depend on whether the client augments."""
    return (torch.Generator().manual_seed(seed),
            torch.Generator().manual_seed((seed + 0x5EED) % 2**63))


def client_batch_order(setup: ClientSetup, generator: torch.Generator) -> list[torch.Tensor]:
    """The client's mini-batches: a fresh permutation of its N samples per epoch."""
    order: list[torch.Tensor] = []
    for _ in range(setup.local_epochs):
        order += list(torch.randperm(setup.num_samples, generator=generator).split(setup.batch_size))
    return order


def mixing_plans(setup: ClientSetup, shape: tuple[int, ...], *, seed: int) -> list[MixPlan]:
    """The client's MixUp/InstaHide plans, one per local epoch (none without ``client.mix``),
    from its own mixing stream (apart from batch order and augmentation)."""
    if setup.mix == "none":
        return []
    generator = torch.Generator().manual_seed((seed + 0x313C) % 2**63)
    return [draw_plan(setup.mix, setup.num_samples, setup.mix_k, setup.mix_lower, setup.mix_upper,
                      shape, generator) for _ in range(setup.local_epochs)]


def _mixed(local: nn.Module, images: torch.Tensor, labels: torch.Tensor,
           plan: MixPlan) -> tuple[torch.Tensor, Mixed]:
    """The encodings of ``plan`` and their mixed labels (InstaHide reflects about the model's
    input mean, 0.5 for a model without one)."""
    if images.ndim != 4 or not images.is_floating_point():
        raise GradleakError(f"client.mix={plan.kind} mixes images [N, C, H, W]; this client's "
                            f"inputs are {images.dtype} of shape {tuple(images.shape)}")
    mean = getattr(local, "input_mean", None)
    plan = plan.to(images.device)
    return (encode(images, plan, 0.5 if mean is None else mean),
            Mixed(labels[plan.partners], plan.coefficients))


@dataclass(frozen=True)
class Mixed:
    """Mixed labels: each row's partner classes ``[N, k]`` and coefficients ``[N, k]``."""

    classes: torch.Tensor
    weights: torch.Tensor

    def __getitem__(self, rows: torch.Tensor) -> Mixed:
        return Mixed(self.classes[rows], self.weights[rows])


def _loss(local: nn.Module, x: torch.Tensor, labels: torch.Tensor | Mixed,
          setup: ClientSetup) -> torch.Tensor:
    """The client's training loss: cross-entropy (on class indices, or on the probabilities of
    mixed labels) plus the model's own training penalties (e.g. PRECODE's KL term; none for most
    models)."""
    logits, penalty = forward_with_penalty(local, x)
    if isinstance(labels, Mixed):  # cross-entropy is linear in the target distribution
        per_class = [F.cross_entropy(logits, labels.classes[:, j], reduction="none",
                                     label_smoothing=setup.label_smoothing)
                     for j in range(labels.classes.shape[1])]
        loss = (torch.stack(per_class, dim=1) * labels.weights).sum(dim=1).mean()
    else:
        loss = F.cross_entropy(logits, labels, label_smoothing=setup.label_smoothing)
    return loss if penalty is None else loss + penalty


def local_gradient(local: nn.Module, names: list[str], images: torch.Tensor,
                   labels: torch.Tensor, setup: ClientSetup, *, seed: int,
                   plans: Sequence[MixPlan] = ()) -> dict[str, torch.Tensor]:
    """FedSGD: dL/dW of the mean loss over all N samples (augmented once if the client augments)."""
    wanted = set(names)
    params = [p for n, p in local.named_parameters() if n in wanted]
    x = training.augment(images, setup.augment, client_generators(seed)[1])
    for plan in plans:  # FedSGD: one epoch, at most one plan
        x, labels = _mixed(local, x, labels, plan)
    grads = torch.autograd.grad(_loss(local, x, labels, setup), params)
    return {n: g.detach().clone() for n, g in zip(names, grads, strict=True)}


def local_training(local: nn.Module, names: list[str], images: torch.Tensor,
                   labels: torch.Tensor, setup: ClientSetup, *, seed: int,
                   plans: Sequence[MixPlan] = ()) -> dict[str, torch.Tensor]:
    """FedAvg: ``W_local - W_global`` after U steps of ``setup``'s ``torch.optim`` optimiser
    (``local`` is trained in place), or after the user's ``setup.local_train``."""
    order_gen, aug_gen = client_generators(seed)
    if setup.local_train is not None:
        return _user_local_training(local, names, images, labels, setup, order_gen)
    wanted = set(names)
    params = [p for n, p in local.named_parameters() if n in wanted]
    start = [p.detach().clone() for p in params]
    optimizer = training.make_optimizer(params, optimizer=setup.optimizer, lr=setup.lr,
                                        momentum=setup.momentum, nesterov=setup.nesterov,
                                        weight_decay=setup.weight_decay)
    for step, batch in enumerate(client_batch_order(setup, order_gen)):
        optimizer.zero_grad(set_to_none=True)
        if plans:  # GradAttack augments the whole set once per epoch, then mixes
            epoch, first = divmod(step, setup.steps_per_epoch)
            if first == 0:
                mixed = _mixed(local, training.augment(images, setup.augment, aug_gen), labels,
                               plans[epoch])
            x, y = mixed[0][batch], mixed[1][batch]
        else:
            x, y = training.augment(images[batch], setup.augment, aug_gen), labels[batch]
        _loss(local, x, y, setup).backward()
        optimizer.step()
    return {n: (p.detach() - s) for n, p, s in zip(names, params, start, strict=True)}


def _user_local_training(local: nn.Module, names: list[str], images: torch.Tensor,
                         labels: torch.Tensor, setup: ClientSetup,
                         generator: torch.Generator) -> dict[str, torch.Tensor]:
    wanted = set(names)
    start = {n: p.detach().clone().requires_grad_(True) for n, p in local.named_parameters()
             if n in wanted}
    buffers = {n: b.clone() for n, b in local.named_buffers()}
    out = setup.local_train(local, dict(start), buffers, images, labels, generator)
    missing = [n for n in names if not isinstance(out, dict) or n not in out]
    if missing:
        raise GradleakError(f"local_train must return a dict of every trained parameter; "
                            f"missing {missing[0]!r}")
    return {n: (out[n] - start[n]).detach() for n in names}


def client_round(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 setup: ClientSetup, *, seed: int) -> ClientRound:
    """:func:`client_update` plus the BN batch statistics of the client's first forward pass."""
    local = copy.deepcopy(model)
    set_bn_mode(local, setup.bn_mode)
    stats = capture_bn_statistics(local, images)
    plans = mixing_plans(setup, tuple(images.shape[1:]), seed=seed)
    return ClientRound(client_update(model, images, labels, setup, seed=seed, plans=plans), stats,
                       plans)
