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
from gradleak.attacks.losses import distance_for
from gradleak.attacks.lowrank import factorable, factored_gradients
from gradleak.attacks.matching import MatchingSetup, matching_setup, resolve_labels, select_layers
from gradleak.attacks.priors import BatchNormStatistics, l2_norm, total_variation
from gradleak.attacks.race import RaceRecord, raced_restarts
from gradleak.attacks.restart import Candidate, Restart, RunContext, rank
from gradleak.attacks.simulate import simulated_delta
from gradleak.attacks.steps import StopRule
from gradleak.errors import GradleakError
from gradleak.progress import tqdm
from gradleak.threat import Knowledge
from gradleak.update import SharedUpdate

__all__ = ["GradientMatchingAttack", "MatchingSetup", "resolve_labels", "select_layers"]


class GradientMatchingAttack(Attack):
    """Base of the GIA-O attacks; subclasses set ``name``, ``info`` and their preset file.

    Its settings are one :class:`~gradleak.attack_settings.MatchingSettings` object,
    :attr:`config` (see :class:`~gradleak.attacks.base.Attack`); the loop runs with
    :attr:`engine`, which is that object (GIAS derives its stage 1's). The attack is the loop's
    :class:`~gradleak.attacks.restart.Hooks`."""

    settings = MatchingSettings
    config: MatchingSettings

    # Adaptive attacker (attack.adaptive): maps the dummy gradients of the matched parameters to
    # their defended version before the distance; see gradleak.attacks.adaptive.
    transform: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None
    # Observer called after every step with (iteration, free variable); benchmarks use it to
    # time the road to a reconstruction. None in normal runs.
    on_iterate: Callable[[int, torch.Tensor], None] | None = None

    @property
    def engine(self) -> MatchingSettings:
        """The settings the GIA-O loop runs with: :attr:`config` itself."""
        return self.config

    # Adaptive attacker: parameters left out of the matching (Soteria's pruned layer).
    excluded: frozenset[str] = frozenset()

    def adapt(self, defense: Any, observed: SharedUpdate, model: nn.Module) -> None:
        """Adaptive attacker: post-process every dummy gradient with the differentiable surrogate
        of the client's defense (:mod:`gradleak.attacks.adaptive`) before the distance, and
        leave out the tensors its adaptive attack does not match."""
        from gradleak.attacks.adaptive import excluded_for, transform_for
        from gradleak.defenses.surrogate import is_identity

        self.excluded = excluded_for(defense, model)
        names = [n for n, _ in model.named_parameters() if n in observed.tensors]
        chosen = [names[i] for i in select_layers(names, self.engine.layers)
                  if names[i] not in self.excluded]
        transform = transform_for(defense, observed, chosen)
        # An identity surrogate (QSGD, Soteria's matched tensors) changes nothing: dropping it
        # keeps the cosine, low-rank and batched fast paths.
        self.transform = None if is_identity(transform) else transform

    def needs(self) -> frozenset[Knowledge]:
        s, needs = self.engine, set(self.requires)
        if s.tv > 0 or s.l2 > 0:
            needs.add(Knowledge.PRIORS)
        if s.bn > 0 and s.bn_source == "client":
            needs.add(Knowledge.BN_STATISTICS)
        if s.labels == "known" and not s.learn_labels:
            needs.add(Knowledge.LABELS)
        return frozenset(needs)

    def context(self, setup: MatchingSetup, obs: Observation, fixed_labels: torch.Tensor | None,
                bn_prior: BatchNormStatistics | None) -> RunContext:
        """What the restarts of one run share (this attack's settings and hooks included)."""
        return RunContext(settings=self.engine, hooks=self, setup=setup, obs=obs,
                          fixed_labels=fixed_labels, bn_prior=bn_prior)

    # -- pieces subclasses may override ---------------------------------------------------------

    def initial(self, obs: Observation, model: nn.Module, generator: torch.Generator) -> torch.Tensor:
        """The free variable's starting value (here: images ``[N, C, H, W]``)."""
        shape, init = (obs.num_samples, *obs.input_shape), self.engine.init
        if init == "rand":
            return torch.rand(shape, generator=generator)
        if init == "normal":
            return torch.randn(shape, generator=generator)
        if init == "gray":
            return torch.full(shape, 0.5) + 0.01 * torch.randn(shape, generator=generator)
        # Geiping's N(0, 1) in normalised space, i.e. mean + std * N(0, 1) in pixel space.
        mean = getattr(model, "input_mean", torch.tensor(0.5)).cpu()
        std = getattr(model, "input_std", torch.tensor(0.25)).cpu()
        return (mean + std * torch.randn(shape, generator=generator)).clamp(0, 1)

    def images(self, variable: torch.Tensor) -> torch.Tensor:
        """Map the free variable to images in pixel space (identity for GIA-O)."""
        return variable

    def images_key(self) -> tuple:
        """What :meth:`images` depends on besides the input shape (none here)."""
        return ()

    def lr_schedule(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """Geiping et al.'s step decay x0.1 at 3/8, 5/8 and 7/8 of the run (none without lr_decay)."""
        return torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=self._milestones() if self.engine.lr_decay else [], gamma=0.1)

    def _milestones(self) -> list[int]:
        return [math.floor(self.engine.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]

    def plateau_milestones(self) -> list[int] | None:
        """With ``attack.stop`` and the engine's own step decay, the decay milestones a plateau
        may bring forward ([] without decay); None where the schedule is fixed (stop off, or a
        subclass's own schedule, e.g. ROG's cosine annealing: a plateau then just stops)."""
        if not self.engine.stop or type(self).lr_schedule is not GradientMatchingAttack.lr_schedule:
            return None
        return self._milestones() if self.engine.lr_decay else []

    def project(self, images: torch.Tensor) -> torch.Tensor:
        """A restart's candidate images: the iterate clamped to the [0, 1] box."""
        return images.clamp(0, 1)

    def post_step(self, it: int, restart: Restart) -> None:
        """Nothing after a step here (text attacks fix special tokens, LAMP reorders)."""

    # -- the loop --------------------------------------------------------------------------------

    def matching_setup(self, obs: Observation) -> MatchingSetup:
        """The attacker's model copy, the matched parameters and the target they are matched to.
        With the cosine distance on a one-gradient update, large linear layers' weight gradients
        are kept factored (:mod:`gradleak.attacks.lowrank`)."""
        setup = matching_setup(obs, self.engine.layers, exclude=self.excluded)
        if self.engine.distance == "cosine" and not setup.simulate and self.transform is None:
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
        s, total = self.engine, images.new_zeros(())
        if s.tv > 0:
            total = total + s.tv * total_variation(images, border=s.tv_border)
        if s.l2 > 0:
            total = total + s.l2 * l2_norm(images)
        if bn_prior is not None:
            total = total + s.bn * bn_prior.loss()
        return total

    def gradient_distance(self, dummy: Sequence[torch.Tensor],
                          target: Sequence[torch.Tensor]) -> torch.Tensor:
        """The ``attack.distance`` between a dummy update and the target (a scalar tensor)."""
        return distance_for(self.engine)(dummy, target)

    def stop_rule(self) -> StopRule | None:
        """A fresh stopping rule for one restart (None with ``attack.stop`` and
        ``attack.max_seconds`` off); the wall-clock budget is shared evenly by the restarts."""
        s = self.engine
        if not s.stop and s.max_seconds is None:
            return None
        seconds = None if s.max_seconds is None else s.max_seconds / s.restarts
        tolerance = s.stop_tolerance if s.stop else -math.inf  # time limit only
        return StopRule(tolerance, s.stop_window, seconds, test=s.stop_test)

    def run(self, obs: Observation, *, seed: int, progress: bool) -> Reconstruction:
        s, setup = self.engine, self.matching_setup(obs)
        fixed_labels, source = self.labels_for(obs, setup)
        bn_prior = self._bn_prior(setup.model, obs) if s.bn > 0 else None
        ctx = self.context(setup, obs, fixed_labels, bn_prior)
        generator = torch.Generator().manual_seed(seed)
        bar = tqdm(total=s.iterations * s.restarts, disable=not progress,
                   desc=f"attack {self.name}", unit="it", dynamic_ncols=True)
        try:
            found, used = self._restarts(ctx, generator, bar)
        finally:
            bar.close()
            if bn_prior is not None:
                bn_prior.remove()
        return self._reconstruction(found, used, source, ctx.history, ctx.race)

    def labels_for(self, obs: Observation, setup: MatchingSetup) -> tuple[torch.Tensor | None, str]:
        """The labels the run uses and their source: None with ``learn_labels`` (DLG optimises
        them), else the granted or inferred ones (``attack.labels``)."""
        if self.engine.learn_labels:
            return None, "optimised"
        labels, source = resolve_labels(obs, self.engine.labels)
        return labels.to(setup.device), source

    def _restarts(self, ctx: RunContext, generator: torch.Generator, bar
                  ) -> tuple[list[Candidate], list[int]]:
        """Every restart's candidates and the iterations each used: one batched problem where
        :func:`functional.batched_restarts` applies, else the restarts one after another, or,
        with ``attack.race``, round by round (:mod:`gradleak.attacks.race`)."""
        plan = functional.plan(ctx)
        if plan.batched:
            return functional.batched_restarts(ctx, generator, bar, plan)
        if ctx.settings.race:
            restarts = [Restart(ctx, generator) for _ in range(ctx.settings.restarts)]
            for restart in restarts:
                restart.gradient = plan.gradient
            found, used, history, ctx.race = raced_restarts(restarts, bar, ctx.settings,
                                                            self.stop_rule)
            ctx.history.extend(history)
            return found, used
        found, used = [], []
        for _ in range(ctx.settings.restarts):
            restart = Restart(ctx, generator)
            if plan.gradient is not None:
                restart.gradient = plan.gradient
            used.append(restart.run(bar, self.stop_rule()))
            ctx.history.extend(restart.recorded())
            found += restart.candidates()
        return found, used

    def _reconstruction(self, found: list[Candidate], used: list[int], source: str,
                        history: list[float], race: RaceRecord | None = None) -> Reconstruction:
        """The candidates ranked (a race's survivors first) as a :class:`Reconstruction`; a
        race's record in ``details["race"]``."""
        ranking = rank(found, None if race is None else race.tiers)
        stacked = torch.stack([found[i][0].cpu() for i in ranking])
        labels = found[ranking[0]][1]
        labels = labels.argmax(-1) if labels.ndim == 2 else labels
        details = {} if race is None else {"race": race.details(ranking)}
        return Reconstruction(images=stacked[0], candidates=stacked,
                              losses=[found[i][2] for i in ranking], labels=labels.tolist(),
                              iterations=self.engine.iterations, label_source=source,
                              history=history, iterations_used=used, details=details)

    def _bn_prior(self, model: nn.Module, obs: Observation) -> BatchNormStatistics:
        if self.engine.bn_source == "client":
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
