"""One restart of the GIA-O engine: its objective, its best-iterate bookkeeping, its loop and the
candidates it hands back.

The loop knows the attack only through :class:`RunContext`: the run's settings
(:class:`~gradleak.attack_settings.MatchingSettings`) and the attack's :class:`Hooks` (implemented
by :class:`gradleak.attacks.optimization.GradientMatchingAttack` and its subclasses), so this
module does not import the attack classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from gradleak.attack_settings import MatchingSettings
from gradleak.attacks.base import Observation
from gradleak.attacks.losses import distance_for
from gradleak.attacks.matching import MatchingSetup
from gradleak.attacks.priors import BatchNormStatistics, group_consistency
from gradleak.attacks.simulate import batch_order
from gradleak.attacks.steps import AdamStep, Gradient, LbfgsStep, StopRule

Candidate = tuple[torch.Tensor, torch.Tensor, float]  # images, labels, gradient loss


class Hooks(Protocol):
    """What the loop (and :mod:`gradleak.attacks.functional`) calls on the attack."""

    # maps the dummy gradients of the matched parameters to their defended version (adaptive)
    transform: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None
    # observer called after every step with (iteration, free variable)
    on_iterate: Callable[[int, torch.Tensor], None] | None

    def initial(self, obs: Observation, model: nn.Module, generator: torch.Generator) -> torch.Tensor:
        """The free variable's starting value."""

    def images(self, variable: torch.Tensor) -> torch.Tensor:
        """The free variable mapped to images in pixel space."""

    def images_key(self) -> tuple:
        """What :meth:`images` depends on besides the input shape (a compile-cache key)."""

    def predict(self, setup: MatchingSetup, obs: Observation, images: torch.Tensor,
                labels: torch.Tensor, order: list[torch.Tensor] | None) -> list[torch.Tensor]:
        """The dummy update of ``images``."""

    def regularisers(self, images: torch.Tensor, bn_prior: BatchNormStatistics | None) -> torch.Tensor:
        """The weighted priors of ``images``."""

    def lr_schedule(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """The learning-rate schedule of one restart's optimiser."""

    def plateau_milestones(self) -> list[int] | None:
        """The decay milestones a plateau may bring forward (None: a fixed schedule)."""

    def project(self, images: torch.Tensor) -> torch.Tensor:
        """The candidate a restart hands back for ``images`` (the box clamp; text: the nearest
        tokens' embeddings)."""

    def post_step(self, it: int, restart: Restart) -> None:
        """Called after step ``it`` (LAMP's discrete step, fixed special tokens)."""


def members(variable: torch.Tensor, group: int) -> list[torch.Tensor]:
    """The group members of the engine's variable: ``variable[k]`` when ``group > 1`` (the
    members are stacked on a leading axis), else the variable itself."""
    return list(variable.unbind(0)) if group > 1 else [variable]


@dataclass
class RunContext:
    """What every restart of one attack run shares: its settings, the attack's hooks and the
    matching problem."""

    settings: MatchingSettings
    hooks: Hooks
    setup: MatchingSetup
    obs: Observation
    fixed_labels: torch.Tensor | None  # None: labels are optimised (DLG)
    bn_prior: BatchNormStatistics | None
    history: list[float] = field(default_factory=list)
    race: object | None = None  # a gradleak.attacks.race.RaceRecord, set by a raced run


@dataclass
class BestIterate:
    """The lowest-gradient-loss iterate seen so far (``attack.keep=best``; inert otherwise).

    "Best" is the gradient distance alone (priors excluded), the quantity restarts are ranked by
    and the attacker's only evidence of fidelity. Not the default: with a weak TV prior the
    lowest-distance iterate is often an early noisy one (16 px MLP, 5 seeds, 300 its: best 31.0
    dB vs last 39.9 dB at TV 1e-4; best wins only at strong TV, 20.6 vs 17.8 dB at TV 0.2).
    """

    enabled: bool
    loss: float = math.inf
    free: list[torch.Tensor] | None = None

    def see(self, match: float, free: list[torch.Tensor]) -> None:
        # match < loss is False for NaN: a diverged iterate is never kept
        if self.enabled and match < self.loss:
            self.loss, self.free = match, [v.detach().clone() for v in free]


class Restart:
    """The free tensors of one restart and the functions of them the loop needs."""

    def __init__(self, ctx: RunContext, generator: torch.Generator) -> None:
        obs, device, group = ctx.obs, ctx.setup.device, ctx.settings.group
        self.ctx, self.settings, self.hooks = ctx, ctx.settings, ctx.hooks
        self.distance = distance_for(ctx.settings)
        # One restart optimises `group` members jointly; a lone member is drawn exactly as
        # before groups existed, so group=1 results are unchanged.
        draws = [ctx.hooks.initial(obs, ctx.setup.model, generator) for _ in range(group)]
        variable = (draws[0] if group == 1 else torch.stack(draws)).to(device).requires_grad_(True)
        self.free = [variable]
        if ctx.settings.learn_labels:
            self.free.append(torch.randn(obs.num_samples, obs.num_classes, generator=generator)
                             .to(device).requires_grad_(True))
        self.order = batch_order(obs.client, generator) if ctx.setup.simulate else None
        self.consensus: torch.Tensor | None = None
        self.best = BestIterate(enabled=ctx.settings.keep == "best")
        self.gradient: Gradient | None = None  # the functional objective, where planned
        self._progress()

    def _progress(self) -> None:
        """Where the restart stands: what lets :meth:`advance` resume it (racing)."""
        self.step: AdamStep | LbfgsStep | None = None  # built on the first advance
        self.stop: StopRule | None = None
        self.used, self.finished = 0, False
        self.lowest = math.inf  # the lowest gradient loss seen (what racing ranks by)
        self.history: list[float] = []  # every 10th iteration's loss and the last one's
        self.last = math.nan

    @classmethod
    def around(cls, ctx: RunContext, variable: torch.Tensor) -> Restart:
        """A restart holding ``variable`` (drawn elsewhere, e.g. by the batched path)."""
        restart = cls.__new__(cls)
        restart.ctx, restart.settings, restart.hooks = ctx, ctx.settings, ctx.hooks
        restart.distance = distance_for(ctx.settings)
        restart.free, restart.order, restart.consensus = [variable], None, None
        restart.best = BestIterate(enabled=ctx.settings.keep == "best")
        restart.gradient = None
        restart._progress()
        return restart

    def labels_of(self, free: list[torch.Tensor]) -> torch.Tensor:
        return self.ctx.fixed_labels if len(free) == 1 else free[1].softmax(-1)

    def predict(self, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        return self.hooks.predict(self.ctx.setup, self.ctx.obs, images, labels, self.order)

    def objective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, gradient-matching loss) of the current iterate; with a group the match
        is the members' mean."""
        s, hooks, free, bn_prior = self.settings, self.hooks, self.free, self.ctx.bn_prior
        total, matches = free[0].new_zeros(()), []
        for member in members(free[0], s.group):
            images = hooks.images(member)
            if bn_prior is not None:
                bn_prior.start()
            match = self.distance(self.predict(images, self.labels_of(free)), self.ctx.setup.target)
            total = total + s.distance_scale * match + hooks.regularisers(images, bn_prior)
            matches.append(match)
        if self.consensus is not None:
            total = total + s.group_weight * group_consistency(free[0], self.consensus)
        return total, matches[0] if len(matches) == 1 else torch.stack(matches).mean()

    def stepper(self) -> AdamStep | LbfgsStep:
        s = self.settings

        def seen(match: float) -> None:
            if match < self.lowest:
                self.lowest = match
            self.best.see(match, self.free)

        if s.optimizer == "lbfgs":
            return LbfgsStep(self.free, self.objective, seen, lr=s.lr, box=s.box)
        return AdamStep(self.free, self.objective, seen, lr=s.lr, signed=s.signed, box=s.box,
                        schedule=self.hooks.lr_schedule,
                        plateau_milestones=self.hooks.plateau_milestones(), gradient=self.gradient)

    def run(self, bar, stop: StopRule | None) -> int:
        """Optimise for ``attack.iterations`` steps or until ``stop`` ends it; the steps used."""
        self.stop = stop
        self.advance(bar, self.settings.iterations)
        return self.used

    def advance(self, bar, until: int) -> bool:
        """Optimise on from where the restart stands (its optimiser, lr schedule, stopping rule
        and best iterate carry over) up to iteration ``until``, or until :attr:`stop` ends it;
        True once the restart is finished (stopped, or at ``attack.iterations``)."""
        s, hooks, stop = self.settings, self.hooks, self.stop
        if self.step is None:
            self.step = self.stepper()
        step, until = self.step, min(until, s.iterations)
        if stop is not None:
            stop.resume()
        try:
            for it in range(self.used, until):
                if s.group > 1 and it > 0 and it % s.group_every == 0:
                    self.consensus = self.free[0].detach().mean(0)
                match = step(it)
                hooks.post_step(it, self)
                if hooks.on_iterate is not None:
                    hooks.on_iterate(it, self.free[0].detach())
                self.used, self.last = it + 1, match
                self.finished = stop is not None and (
                    stop.out_of_time()
                    or (stop.plateau(match, self.free[0]) and not self._decayed(step, stop, it)))
                if it % 10 == 0:
                    self.history.append(match)
                    bar.set_postfix(grad_loss=f"{match:.4f}")
                bar.update(1)
                if self.finished:
                    break
        finally:
            if stop is not None:
                stop.pause()
        self.finished = self.finished or self.used >= s.iterations
        return self.finished

    def recorded(self) -> list[float]:
        """The loss history the run reports: every 10th iteration's and the last one's."""
        tail = [self.last] if self.used and (self.used - 1) % 10 else []
        return self.history + tail

    @staticmethod
    def _decayed(step: AdamStep | LbfgsStep, stop: StopRule, it: int) -> bool:
        """At a plateau: decay the lr early if the schedule has a decay left (and go on)."""
        if step.plateau(it):
            stop.reset()
            return True
        return False

    def candidates(self) -> list[Candidate]:
        """The restart's result: its last iterate, or its best one where that scores lower."""
        if self.settings.group > 1:
            return self._group_candidates()
        # The final iterate was never scored: one forward/backward per restart.
        found = self.candidate(self.free)
        best = self.best
        if best.free is not None and not found[2] <= best.loss:
            other = self.candidate(best.free, best.loss)
            if not found[2] <= other[2]:
                found = other
        return [found]

    def _group_candidates(self) -> list[Candidate]:
        """Every member of the group and the members' consensus, each with its gradient loss.

        With ``keep=best`` the best group iterate replaces the last one when its members' mean
        loss is lower. The consensus (mean of the members' free variables) is a candidate of its
        own: the restart ranking then decides between it and the members on gradient loss alone.
        """
        def score(group_free: list[torch.Tensor]) -> list[Candidate]:
            rest = group_free[1:]
            found = [self.candidate([member, *rest])
                     for member in members(group_free[0], self.settings.group)]
            found.append(self.candidate([group_free[0].mean(0), *rest]))
            return found

        found = score([v.detach() for v in self.free])
        if self.best.free is not None:
            other = score(self.best.free)
            if sum(f[2] for f in other[:-1]) < sum(f[2] for f in found[:-1]):
                found = other
        return found

    def candidate(self, free: list[torch.Tensor], known: float | None = None) -> Candidate:
        """Box-clamped images, labels and gradient loss of the iterate ``free``.

        ``known`` is the loss the step measured on the unclamped images; it is reused when the
        clamp changes nothing (always for boxed Adam) and re-measured otherwise (``box=false``,
        L-BFGS's inner iterates), so the loss reported is that of the images returned.
        """
        with torch.no_grad():
            raw = self.hooks.images(free[0])
            images = self.hooks.project(raw)
        labels = self.labels_of(free).detach()
        if known is not None and torch.equal(raw, images):
            return images, labels, known
        check = images.clone().requires_grad_(True)
        loss = self.distance(self.predict(check, labels), self.ctx.setup.target)
        return images, labels, float(loss.detach())


def rank(found: list[Candidate], tiers: list[int] | None = None) -> list[int]:
    """Candidate indices by gradient loss, lowest first, NaN last; with ``tiers`` (racing: 0
    for a survivor's candidate, 1 for an eliminated restart's) lower tiers first."""
    tier = tiers or [0] * len(found)
    return sorted(range(len(found)),
                  key=lambda i: (tier[i], math.isnan(found[i][2]), found[i][2]))

