"""DAGER on a FedAvg delta with several mini-batches: replay the client's first epoch.

The delta's span holds each mini-batch's layer inputs at the weights of *its* local step. The
server holds only the global weights ``W0``, at which the first mini-batch passes the span tests
exactly and the later ones, seen at moved weights, need not (on the tiny GPT-2 one SGD step at
lr 0.01 moved their layer-1 inputs 0.13-0.16 off the span, against a tolerance of 0.03). A
server that knows the client's training (level 3: B, lr, plain SGD) can follow the trajectory:
the sentences found at ``W_t`` are step t's mini-batch, so ``W_(t+1) = W_t - lr * grad L(found;
W_t)`` (the client's own next-token loss, a causal LM's targets are its input), and the next
mini-batch is decoded at ``W_(t+1)``. Exact while each step's sentences are all found; later
epochs reshuffle the batches (the order is the client's secret), so only the first epoch is
replayed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradleak.attacks.base import Observation

Decoded = tuple[list[list[int]], list[float], dict[str, Any]]


def can_replay(obs: Observation, eos: bool) -> bool:
    """Whether the first epoch can be replayed: a causal LM's model delta, the client's training
    granted (level 3), plain SGD without momentum or weight decay, several mini-batches."""
    c = obs.client
    return (obs.update.kind == "model_delta" and eos and c is not None
            and getattr(obs.model, "task", None) == "causal_lm" and c.optimizer == "sgd"
            and c.momentum == 0 and c.weight_decay == 0 and c.label_smoothing == 0
            and c.batch_size < obs.num_samples)


def sgd_step(model: nn.Module, rows: list[list[int]], lr: float, length: int) -> nn.Module:
    """A copy of ``model`` after one SGD step on the sentences ``rows`` (ids with EOS), padded
    to ``length`` as the client pads them."""
    tok = model.tokenizer
    x = torch.full((len(rows), 2, length), tok.pad_id, dtype=torch.long)
    x[:, 1] = 0
    for i, ids in enumerate(rows):
        x[i, 0, : len(ids)] = torch.tensor(ids[:length])
        x[i, 1, : len(ids)] = 1
    nxt = copy.deepcopy(model)
    nxt.eval()  # as the server evaluates (no dropout): exact for clients trained without it
    params = [p for p in nxt.parameters() if p.requires_grad]
    loss = F.cross_entropy(nxt(x), nxt.targets(x, torch.zeros(len(rows), dtype=torch.long)))
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            if g is not None:
                p.sub_(lr * g)
    return nxt


def replay_local_steps(model: nn.Module, decode: Callable[[nn.Module], Decoded], client: Any,
                       length: int) -> Decoded:
    """Decode at ``W0``, then at each replayed weight of the client's first epoch; the union of
    the sentences found, each with its layer-1 distance at the step that found it."""
    rows, scores, info = decode(model)
    found = dict(zip(map(tuple, rows), scores, strict=True))
    new, current, replayed = rows, model, 0
    eos = int(model.tokenizer.eos_id)
    for _ in range(1, math.ceil(client.num_samples / client.batch_size)):
        if len(found) >= client.num_samples or not new:
            break
        step_rows = sorted(new, key=lambda r: found[tuple(r)])[: client.batch_size]
        current = sgd_step(current, [r[: length - 1] + [eos] for r in step_rows], client.lr,
                           length)
        more, dist, _ = decode(current)
        new = [r for r in more if tuple(r) not in found]
        found.update((tuple(r), d) for r, d in zip(more, dist, strict=True)
                     if tuple(r) not in found)
        replayed += 1
    info["replayed_steps"] = replayed
    return [list(r) for r in found], list(found.values()), info
