"""What a gradient-matching run starts from: the labels it uses, the parameters it matches and
the attacker's copy of the model (shared by the GIA-O engine, GIAS, GGL and the analytic attacks).
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from gradleak.attacks.base import Observation
from gradleak.attacks.labels import infer_labels
from gradleak.errors import GradleakError
from gradleak.fl.client import set_bn_mode


def resolve_labels(obs: Observation, rule: str) -> tuple[torch.Tensor, str]:
    """The labels an attack uses: the granted multiset (``rule="known"``) or inferred by ``rule``.

    The direction's scale: a FedSGD gradient is one step of size 1; a FedAvg delta is U steps of
    the client's lr, known only with client training details (else scale-free estimates).
    """
    if rule == "known":
        if obs.labels is None:  # guarded by needs(); kept for direct library use
            raise GradleakError("attack.labels=known needs threat.knows_labels=true")
        return obs.labels.clone(), "known"
    if obs.protocol == "fedsgd":
        steps, lr = 1, 1.0
    elif obs.client is not None:
        steps, lr = obs.client.local_updates, obs.client.lr
    else:
        steps, lr = 1, None
    inferred = infer_labels(rule, obs.model, obs.update.gradient_direction(), obs.num_samples,
                            input_shape=obs.input_shape, local_steps=steps, lr=lr)
    return torch.tensor(inferred, dtype=torch.long), rule


def select_layers(names: Sequence[str], layers: Sequence[str] | None) -> list[int]:
    """Indices of the parameters whose name equals or starts with one of ``layers`` (all if None).

    A prefix that matches no name is retried as ``net.<prefix>``: the Classifier wrapper puts
    every parameter under ``net.``, so a bare block name (``inception3a``, ``Mixed_5b``,
    ``layer1.0``; see :func:`gradleak.models.blocks.named_blocks`) selects that block.
    """
    if not layers:
        return list(range(len(names)))

    def matches(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix.rstrip(".") + ".")

    prefixes = [p if any(matches(n, p) for n in names) else f"net.{p}" for p in layers]
    chosen = [i for i, n in enumerate(names) if any(matches(n, p) for p in prefixes)]
    if not chosen:
        raise GradleakError(f"attack.layers={list(layers)} matches no parameter; names look like "
                            f"{', '.join(names[:4])}, ...")
    return chosen


@dataclass
class MatchingSetup:
    """What one gradient-matching run works with (see :func:`matching_setup`)."""

    model: nn.Module
    device: torch.device
    all_names: list[str]
    chosen: list[int]  # indices into all_names of the matched parameters
    params: list[torch.Tensor]
    simulate: bool  # WST: replay the client's local SGD instead of one gradient
    target: list[torch.Tensor]
    # chosen-parameter index -> linear layer whose weight gradient is kept factored (lowrank.py)
    lowrank: dict[int, nn.Linear] = field(default_factory=dict)


def matching_setup(obs: Observation, layers: Sequence[str] | None,
                   exclude: Collection[str] = ()) -> MatchingSetup:
    """The attacker's model copy, the matched parameters and the target they are matched to;
    ``exclude``: parameter names left out (an adaptive attack's, e.g. against Soteria)."""
    model = copy.deepcopy(obs.model)
    set_bn_mode(model, obs.bn_mode, dropout=False)
    for p in model.parameters():
        p.requires_grad_(True)
    # The parameters the client trained and shared (a user model may freeze some).
    all_names = [n for n, _ in model.named_parameters() if n in obs.update.tensors]
    chosen = [i for i in select_layers(all_names, layers) if all_names[i] not in exclude]
    if not chosen:
        raise GradleakError(f"nothing left to match: attack.layers={layers} selects only "
                            f"{', '.join(sorted(exclude))}, which the adaptive attack leaves out")
    by_name = dict(model.named_parameters())
    simulate = obs.protocol == "fedavg" and obs.client is not None
    source = obs.update.tensors if simulate else obs.update.gradient_direction()
    device = next(model.parameters()).device
    return MatchingSetup(model=model, device=device, all_names=all_names, chosen=chosen,
                         params=[by_name[all_names[i]] for i in chosen], simulate=simulate,
                         target=[source[all_names[i]].to(device) for i in chosen])
