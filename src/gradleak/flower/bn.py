"""What a reply's BatchNorm buffers tell the server: the client's batch statistics (level 4).

A Flower reply carries the client's whole ``state_dict``, BN running statistics included. PyTorch
updates them once per training-mode forward pass, with ``x`` the batch mean, or the *unbiased*
batch variance, of the layer's input over batch and space:

* ``momentum=m``: ``running <- (1 - m) running + m x``. After ``k`` passes from the global value
  ``old``: ``new = (1-m)^k old + sum_j m (1-m)^(k-j) x_j``, so
  ``(new - (1-m)^k old) / (1 - (1-m)^k) = sum_j w_j x_j`` with ``w_j = m (1-m)^(k-j) / (1 - (1-m)^k)``
  (weights summing to 1, the last batch heaviest). For ``k = 1`` (FedSGD: one step on one batch)
  this is the client's exact batch statistic; for a FedAvg reply of several local steps it is that
  exponential mix of the steps' batch statistics, and the server holds exactly the mix.
* ``momentum=None`` (cumulative average): ``running_t = running_{t-1} + (x - running_{t-1}) / t``
  with ``t`` = ``num_batches_tracked`` after the pass, so ``((t0 + k) new - t0 old) / k`` is the
  plain mean of the ``k`` batch statistics (``k = 1``: exact).

``k`` is the advance of ``num_batches_tracked``; without counters in the reply (a momentum layer
only) it is the number of local steps the configuration describes. The variance is turned into
the biased one the BN prior (:class:`~gradleak.attacks.priors.BatchNormStatistics`) and the engine's
:func:`~gradleak.fl.client.capture_bn_statistics` use: ``var_biased = var_unbiased (n - 1) / n``,
``n`` = samples per step x the layer's spatial size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from logging import INFO, WARNING

import torch
from flwr.app import ArrayRecord
from flwr.common import log
from torch import nn

from gradleak.flower.arrays import to_tensors

Stats = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class BNStatistics:
    """The outcome of reading one reply's BN buffers.

    ``statistics``: per BN layer, in ``model.modules()`` order, ``(mean [C], biased var [C])`` of the
    client's batch (``steps == 1``) or the mix of its ``steps`` batches; ``None`` when they could
    not be derived (``note`` says why) and are then not granted."""

    statistics: Stats | None
    steps: int | None
    note: str

    @property
    def granted(self) -> bool:
        return self.statistics is not None


def bn_layers(module: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The BN layers in ``module.modules()`` order (the order the BN prior hooks them in)."""
    return [(n, m) for n, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def spatial_sizes(module: nn.Module, input_shape: Sequence[int]) -> list[int]:
    """Per BN layer, the number of values per channel one sample contributes (H x W at that layer)."""
    sizes: list[int] = []

    def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        sizes.append(math.prod(inputs[0].shape[2:]))

    layers = [m for _, m in bn_layers(module)]
    handles = [m.register_forward_hook(hook) for m in layers]
    was_training = module.training
    module.eval()  # eval: the probe pass must not move the running statistics
    try:
        with torch.no_grad():
            module(torch.zeros(1, *input_shape))
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return sizes[: len(layers)]


def _counter(tensors: dict[str, torch.Tensor], key: str) -> float | None:
    t = tensors.get(key)
    return None if t is None or t.numel() != 1 else float(t.double().item())


def _layer(name: str, bn: nn.modules.batchnorm._BatchNorm, key: str, old: dict[str, torch.Tensor],
           new: dict[str, torch.Tensor], *, steps_hint: int, n: int
           ) -> tuple[torch.Tensor, torch.Tensor, int] | str | None:
    """One layer's ``(mean, biased var, k)``; ``None`` when its buffers did not move; a string
    saying why they cannot be read otherwise."""
    keys = [f"{key}.running_mean", f"{key}.running_var"]
    if bn.running_mean is None:
        return f"BN layer {name!r} keeps no running statistics (track_running_stats=False)"
    if any(k not in old or k not in new for k in keys):
        return f"the arrays have no {keys[0]!r}/{keys[1]!r}"
    m_old, v_old = (old[k].double() for k in keys)
    m_new, v_new = (new[k].double() for k in keys)
    c_old, c_new = (_counter(d, f"{key}.num_batches_tracked") for d in (old, new))
    k = None if c_old is None or c_new is None else round(c_new - c_old)
    if torch.equal(m_old, m_new) and torch.equal(v_old, v_new) and not k:
        return None
    if bn.momentum is None:
        if k is None or k < 1:
            return (f"BN layer {name!r} (momentum=None, a cumulative average) needs "
                    "num_batches_tracked in the reply, advanced by the client's steps")
        mean = ((c_old + k) * m_new - c_old * m_old) / k
        var = ((c_old + k) * v_new - c_old * v_old) / k
    else:
        k = steps_hint if k is None else k
        decay = (1.0 - float(bn.momentum)) ** k
        if k < 1 or 1.0 - decay <= 1e-12:
            return f"BN layer {name!r}: momentum {bn.momentum} with {k} counted step(s)"
        mean, var = (m_new - decay * m_old) / (1 - decay), (v_new - decay * v_old) / (1 - decay)
    var = var * (n - 1) / n  # the running variance is the unbiased one
    scale = float(v_new.abs().max()) + 1e-12
    if not (torch.isfinite(mean).all() and torch.isfinite(var).all()) or float(var.min()) < -1e-4 * scale:
        return (f"BN layer {name!r}: the buffers are not a BN update of the global ones (a "
                "negative variance; defended or altered buffers?)")
    return mean.float(), var.clamp(min=0).float(), k


def reply_bn_statistics(module: nn.Module, prefix: str, incoming: ArrayRecord, outgoing: ArrayRecord,
                        *, input_shape: Sequence[int], batch_size: int, steps_hint: int
                        ) -> BNStatistics | None:
    """The client's BN batch statistics as the server derives them from a reply.

    ``module``: the global model (its BN layers' ``momentum`` is used), whose parameter names are
    the record keys behind ``prefix``; ``incoming``: the global arrays sent, ``outgoing``: the
    reply's; ``batch_size``: samples per local step; ``steps_hint``: local steps to assume when the
    reply has no ``num_batches_tracked``. ``None`` for a model without BN layers. Logs a warning
    when the statistics cannot be derived (and then they are not granted)."""
    layers = bn_layers(module)
    if not layers:
        return None
    old, new = to_tensors(incoming), to_tensors(outgoing)
    sizes = spatial_sizes(module, input_shape)
    found: list[tuple[torch.Tensor, torch.Tensor, int] | None] = []
    for (name, bn), spatial in zip(layers, sizes, strict=True):
        key = name[len(prefix):] if name.startswith(prefix) else name
        n = batch_size * spatial
        out = _layer(name, bn, key, old, new, steps_hint=steps_hint, n=n) if n > 1 else \
            f"BN layer {name!r} normalises over {n} value per channel"
        if isinstance(out, str):
            return _refused(out)
        found.append(out)
    if all(f is None for f in found):
        note = ("the reply's BN running statistics equal the global ones (BN in eval mode, or "
                "buffers dropped): no batch statistics to derive")
        log(INFO, "gradleak: %s", note)
        return BNStatistics(None, 0, note)
    if any(f is None for f in found):
        return _refused("some BN layers' running statistics moved and others did not")
    steps = {f[2] for f in found if f is not None}
    k = max(steps)
    what = "the exact batch statistics" if k == 1 else f"the exponential mix of {k} batches' statistics"
    note = f"derived from the reply's BN buffers: {what} ({k} local step(s))"
    return BNStatistics([(f[0], f[1]) for f in found if f is not None], k, note)


def _refused(why: str) -> BNStatistics:
    note = f"BN statistics in the reply not granted: {why}"
    log(WARNING, "gradleak: %s", note)
    return BNStatistics(None, None, note)


__all__ = ["BNStatistics", "bn_layers", "reply_bn_statistics"]
