"""The GIA-O engine: optimise dummy data so its gradient matches the observed update.

One loop serves every observable-space attack of the paper's Tab. 7 (DLG, iDLG, Inverting
Gradients, GradInversion, ...). Attacks differ only in composable settings: the gradient
distance and the layers it reads (:mod:`gradleak.attacks.losses`), the priors
(:mod:`gradleak.attacks.priors`), the optimiser (signed Adam with step decay, or L-BFGS;
:mod:`gradleak.attacks.steps`), the box constraint and how labels are obtained (known, inferred,
or optimised jointly as in DLG). One restart's loop lives in :mod:`gradleak.attacks.restart`;
the compiled and batched objective in :mod:`gradleak.attacks.functional`.

Against a FedAvg update the dummy gradient is compared with the negated model delta (one-step
approximation, BST) unless the threat grants client training details, in which case the client's
local SGD is replayed differentiably (WST).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradleak.attack_settings import MatchingSettings
from gradleak.attacks import functional
from gradleak.attacks.base import Attack, Observation, Reconstruction
from gradleak.attacks.losses import DISTANCES
from gradleak.attacks.lowrank import factorable, factored_gradients
from gradleak.attacks.matching import MatchingSetup, matching_setup, resolve_labels, select_layers
from gradleak.attacks.priors import TV_BORDERS, BatchNormStatistics, l2_norm, total_variation
from gradleak.attacks.restart import Candidate, Restart, RunContext, rank
from gradleak.attacks.simulate import simulated_delta
from gradleak.attacks.steps import StopRule
from gradleak.errors import GradleakError
from gradleak.progress import tqdm
from gradleak.threat import Knowledge
from gradleak.update import SharedUpdate

__all__ = ["GradientMatchingAttack", "MatchingSetup", "resolve_labels", "select_layers"]


class GradientMatchingAttack(Attack):
    """Base of the GIA-O attacks; subclasses set ``name``, ``info`` and their defaults file.
    Its settings (:class:`~gradleak.attack_settings.MatchingSettings`) are its constructor's
    keywords one to one."""

    settings = MatchingSettings

    # Adaptive attacker (attack.adaptive): maps the dummy gradients of the matched parameters to
    # their defended version before the distance; see gradleak.attacks.adaptive.
    transform: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None
    # Observer called after every step with (iteration, free variable); benchmarks use it to
    # time the road to a reconstruction. None in normal runs.
    on_iterate: Callable[[int, torch.Tensor], None] | None = None

    def adapt(self, defense: Any, observed: SharedUpdate, model: nn.Module) -> None:
        """Adaptive attacker: post-process every dummy gradient with the differentiable surrogate
        of the client's defense (:mod:`gradleak.attacks.adaptive`) before the distance."""
        from gradleak.attacks.adaptive import transform_for

        names = [n for n, _ in model.named_parameters() if n in observed.tensors]
        self.transform = transform_for(defense, observed,
                                       [names[i] for i in select_layers(names, self.layers)])

    def __init__(self, *, iterations: int = 4800, lr: float = 0.1, restarts: int = 1,
                 labels: str = "known", init: str = "randn", lr_decay: bool = True,
                 distance: str = "cosine", distance_scale: float = 1.0, optimizer: str = "adam",
                 signed: bool = True,
                 box: bool = True, tv: float = 0.0, l2: float = 0.0, bn: float = 0.0,
                 bn_source: str = "client", layers: Sequence[str] | None = None,
                 learn_labels: bool = False, keep: str = "last", group: int = 1,
                 group_weight: float = 0.01, group_every: int = 100, tv_border: str = "none",
                 stop: bool = False, stop_tolerance: float = 1e-3, stop_window: int = 100,
                 max_seconds: float | None = None, compile: bool = False,
                 batch_restarts: str = "auto") -> None:
        self._check(keep=keep, group=group, group_every=group_every, learn_labels=learn_labels,
                    distance=distance, tv_border=tv_border, stop_window=stop_window,
                    batch_restarts=batch_restarts)
        self.iterations, self.lr, self.restarts = iterations, lr, restarts
        self.labels, self.init, self.lr_decay = labels, init, lr_decay
        self.distance_name, self.distance = distance, DISTANCES[distance]
        self.distance_scale = distance_scale
        self.optimizer, self.signed, self.box = optimizer, signed, box
        self.tv, self.l2, self.bn, self.bn_source = tv, l2, bn, bn_source
        self.layers = list(layers) if layers else None
        self.learn_labels = learn_labels
        self.keep = keep
        self.group, self.group_weight, self.group_every = group, group_weight, group_every
        self.tv_border = tv_border
        self.stop, self.stop_tolerance, self.stop_window = stop, stop_tolerance, stop_window
        self.max_seconds, self.compile, self.batch_restarts = max_seconds, compile, batch_restarts

    @staticmethod
    def _check(*, keep: str, group: int, group_every: int, learn_labels: bool, distance: str,
               tv_border: str, stop_window: int, batch_restarts: str) -> None:
        if keep not in ("last", "best"):
            raise GradleakError(f"bad value {keep!r} for attack.keep; allowed: last, best")
        if group < 1 or group_every < 1:
            raise GradleakError(f"attack.group={group} and attack.group_every={group_every} must be >= 1")
        if group > 1 and learn_labels:
            raise GradleakError("attack.group > 1 cannot be combined with attack.learn_labels=true "
                                "(the members would each need their own soft labels)")
        if distance not in DISTANCES:
            raise GradleakError(f"bad value {distance!r} for attack.distance; allowed: "
                                f"{', '.join(DISTANCES)}")
        if tv_border not in TV_BORDERS:
            raise GradleakError(f"bad value {tv_border!r} for attack.tv_border; allowed: "
                                f"{', '.join(TV_BORDERS)}")
        if stop_window < 1:
            raise GradleakError(f"attack.stop_window={stop_window} must be >= 1")
        if batch_restarts not in functional.BATCH_MODES:
            raise GradleakError(f"bad value {batch_restarts!r} for attack.batch_restarts; allowed: "
                                f"{', '.join(functional.BATCH_MODES)}")

    def needs(self) -> frozenset[Knowledge]:
        needs = set(self.requires)
        if self.tv > 0 or self.l2 > 0:
            needs.add(Knowledge.PRIORS)
        if self.bn > 0 and self.bn_source == "client":
            needs.add(Knowledge.BN_STATISTICS)
        if self.labels == "known" and not self.learn_labels:
            needs.add(Knowledge.LABELS)
        return frozenset(needs)

    # -- pieces subclasses may override ---------------------------------------------------------

    def initial(self, obs: Observation, model: nn.Module, generator: torch.Generator) -> torch.Tensor:
        """The free variable's starting value (here: images ``[N, C, H, W]``)."""
        shape = (obs.num_samples, *obs.input_shape)
        if self.init == "rand":
            return torch.rand(shape, generator=generator)
        if self.init == "normal":
            return torch.randn(shape, generator=generator)
        if self.init == "gray":
            return torch.full(shape, 0.5) + 0.01 * torch.randn(shape, generator=generator)
        # Geiping's N(0, 1) in normalised space, i.e. mean + std * N(0, 1) in pixel space.
        mean = getattr(model, "input_mean", torch.tensor(0.5)).cpu()
        std = getattr(model, "input_std", torch.tensor(0.25)).cpu()
        return (mean + std * torch.randn(shape, generator=generator)).clamp(0, 1)

    def images(self, variable: torch.Tensor) -> torch.Tensor:
        """Map the free variable to images in pixel space (identity for GIA-O)."""
        return variable

    def lr_schedule(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """Geiping et al.'s step decay x0.1 at 3/8, 5/8 and 7/8 of the run (none without lr_decay)."""
        return torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=self._milestones() if self.lr_decay else [], gamma=0.1)

    def _milestones(self) -> list[int]:
        return [math.floor(self.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]

    def plateau_milestones(self) -> list[int] | None:
        """With ``attack.stop`` and the engine's own step decay, the decay milestones a plateau
        may bring forward ([] without decay); None where the schedule is fixed (stop off, or a
        subclass's own schedule, e.g. ROG's cosine annealing: a plateau then just stops)."""
        if not self.stop or type(self).lr_schedule is not GradientMatchingAttack.lr_schedule:
            return None
        return self._milestones() if self.lr_decay else []

    # -- the loop --------------------------------------------------------------------------------

    def matching_setup(self, obs: Observation) -> MatchingSetup:
        """The attacker's model copy, the matched parameters and the target they are matched to.
        With the cosine distance on a one-gradient update, large linear layers' weight gradients
        are kept factored (:mod:`gradleak.attacks.lowrank`)."""
        setup = matching_setup(obs, self.layers)
        if self.distance_name == "cosine" and not setup.simulate and self.transform is None:
            setup.lowrank = factorable(setup.model, setup.all_names, setup.chosen, obs.num_samples,
                                       obs.input_shape)
        return setup

    def predict(self, setup: MatchingSetup, obs: Observation, images: torch.Tensor,
                labels: torch.Tensor, order: list[torch.Tensor] | None) -> list[torch.Tensor]:
        """The dummy update of ``images``: one gradient (BST) or the replayed local SGD (WST)."""
        if setup.simulate:
            delta = simulated_delta(setup.model, setup.all_names, images, labels, obs.client, order)
            dummy = [delta[i] for i in setup.chosen]
        elif setup.lowrank and self.transform is None:
            dummy = factored_gradients(setup.model, setup.params, setup.lowrank,
                                       lambda: F.cross_entropy(setup.model(images), labels))
        else:
            loss = F.cross_entropy(setup.model(images), labels)
            dummy = list(torch.autograd.grad(loss, setup.params, create_graph=True))
        return dummy if self.transform is None else self.transform(dummy)

    def regularisers(self, images: torch.Tensor, bn_prior: BatchNormStatistics | None) -> torch.Tensor:
        """The weighted priors (TV, L2 norm, BN statistics) of ``images``; 0 without priors."""
        total = images.new_zeros(())
        if self.tv > 0:
            total = total + self.tv * total_variation(images, border=self.tv_border)
        if self.l2 > 0:
            total = total + self.l2 * l2_norm(images)
        if bn_prior is not None:
            total = total + self.bn * bn_prior.loss()
        return total

    def stop_rule(self) -> StopRule | None:
        """A fresh stopping rule for one restart (None with ``attack.stop`` and
        ``attack.max_seconds`` off); the wall-clock budget is shared evenly by the restarts."""
        if not self.stop and self.max_seconds is None:
            return None
        seconds = None if self.max_seconds is None else self.max_seconds / self.restarts
        tolerance = self.stop_tolerance if self.stop else -math.inf  # time limit only
        return StopRule(tolerance, self.stop_window, seconds)

    def run(self, obs: Observation, *, seed: int, progress: bool) -> Reconstruction:
        setup = self.matching_setup(obs)
        if self.learn_labels:
            fixed_labels, source = None, "optimised"
        else:
            fixed_labels, source = resolve_labels(obs, self.labels)
            fixed_labels = fixed_labels.to(setup.device)
        bn_prior = self._bn_prior(setup.model, obs) if self.bn > 0 else None
        ctx = RunContext(setup=setup, obs=obs, fixed_labels=fixed_labels, bn_prior=bn_prior)
        generator = torch.Generator().manual_seed(seed)
        bar = tqdm(total=self.iterations * self.restarts, disable=not progress,
                   desc=f"attack {self.name}", unit="it", dynamic_ncols=True)
        try:
            found, used = self._restarts(ctx, generator, bar)
        finally:
            bar.close()
            if bn_prior is not None:
                bn_prior.remove()
        return self._reconstruction(found, used, source, ctx.history)

    def _restarts(self, ctx: RunContext, generator: torch.Generator, bar
                  ) -> tuple[list[Candidate], list[int]]:
        """Every restart's candidates and the iterations each used: one batched problem where
        :func:`functional.batched_restarts` applies, else the restarts one after another."""
        plan = functional.plan(self, ctx)
        if plan.batched:
            return functional.batched_restarts(self, ctx, generator, bar, plan)
        found, used = [], []
        for _ in range(self.restarts):
            restart = Restart(self, ctx, generator)
            if plan.gradient is not None:
                restart.gradient = plan.gradient
            used.append(restart.run(bar, self.stop_rule()))
            found += restart.candidates()
        return found, used

    def _reconstruction(self, found: list[Candidate], used: list[int], source: str,
                        history: list[float]) -> Reconstruction:
        ranking = rank(found)
        stacked = torch.stack([found[i][0].cpu() for i in ranking])
        labels = found[ranking[0]][1]
        labels = labels.argmax(-1) if labels.ndim == 2 else labels
        return Reconstruction(images=stacked[0], candidates=stacked,
                              losses=[found[i][2] for i in ranking], labels=labels.tolist(),
                              iterations=self.iterations, label_source=source, history=history,
                              iterations_used=used)

    def _members(self, variable: torch.Tensor) -> list[torch.Tensor]:
        """The group members of the engine's variable: ``variable[k]`` when ``group > 1`` (the
        members are stacked on a leading axis), else the variable itself."""
        return list(variable.unbind(0)) if self.group > 1 else [variable]

    def _bn_prior(self, model: nn.Module, obs: Observation) -> BatchNormStatistics:
        if self.bn_source == "client":
            if obs.bn_statistics is None:
                raise GradleakError("attack.bn_source=client needs threat.knows_bn_statistics=true")
            targets = obs.bn_statistics
        else:
            targets = None
        prior = BatchNormStatistics(model, targets)
        if not prior.layers:
            raise GradleakError("attack.bn > 0 needs a model with BatchNorm layers; set attack.bn=0 "
                                "or model.norm=batch")
        return prior
