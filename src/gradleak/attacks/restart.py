"""One restart of the GIA-O engine: its objective, its best-iterate bookkeeping, its loop and the
candidates it hands back (see :class:`gradleak.attacks.optimization.GradientMatchingAttack`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from gradleak.attacks.base import Observation
from gradleak.attacks.matching import MatchingSetup
from gradleak.attacks.priors import BatchNormStatistics, group_consistency
from gradleak.attacks.simulate import batch_order
from gradleak.attacks.steps import AdamStep, Gradient, LbfgsStep, StopRule

if TYPE_CHECKING:
    from gradleak.attacks.optimization import GradientMatchingAttack

Candidate = tuple[torch.Tensor, torch.Tensor, float]  # images, labels, gradient loss


@dataclass
class RunContext:
    """What every restart of one attack run shares."""

    setup: MatchingSetup
    obs: Observation
    fixed_labels: torch.Tensor | None  # None: labels are optimised (DLG)
    bn_prior: BatchNormStatistics | None
    history: list[float] = field(default_factory=list)


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

    def __init__(self, attack: GradientMatchingAttack, ctx: RunContext,
                 generator: torch.Generator) -> None:
        obs, device = ctx.obs, ctx.setup.device
        self.attack, self.ctx = attack, ctx
        # One restart optimises `group` members jointly; a lone member is drawn exactly as
        # before groups existed, so group=1 results are unchanged.
        draws = [attack.initial(obs, ctx.setup.model, generator) for _ in range(attack.group)]
        variable = (draws[0] if attack.group == 1 else torch.stack(draws)).to(device).requires_grad_(True)
        self.free = [variable]
        if attack.learn_labels:
            self.free.append(torch.randn(obs.num_samples, obs.num_classes, generator=generator)
                             .to(device).requires_grad_(True))
        self.order = batch_order(obs.client, generator) if ctx.setup.simulate else None
        self.consensus: torch.Tensor | None = None
        self.best = BestIterate(enabled=attack.keep == "best")
        self.gradient: Gradient | None = None  # the functional objective, where planned

    @classmethod
    def around(cls, attack: GradientMatchingAttack, ctx: RunContext,
               variable: torch.Tensor) -> Restart:
        """A restart holding ``variable`` (drawn elsewhere, e.g. by the batched path)."""
        restart = cls.__new__(cls)
        restart.attack, restart.ctx, restart.free = attack, ctx, [variable]
        restart.order, restart.consensus = None, None
        restart.best = BestIterate(enabled=attack.keep == "best")
        restart.gradient = None
        return restart

    def labels_of(self, free: list[torch.Tensor]) -> torch.Tensor:
        return self.ctx.fixed_labels if len(free) == 1 else free[1].softmax(-1)

    def predict(self, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        return self.attack.predict(self.ctx.setup, self.ctx.obs, images, labels, self.order)

    def objective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, gradient-matching loss) of the current iterate; with a group the match
        is the members' mean."""
        attack, free, bn_prior = self.attack, self.free, self.ctx.bn_prior
        total, matches = free[0].new_zeros(()), []
        for member in attack._members(free[0]):
            images = attack.images(member)
            if bn_prior is not None:
                bn_prior.start()
            match = attack.distance(self.predict(images, self.labels_of(free)), self.ctx.setup.target)
            total = total + attack.distance_scale * match + attack.regularisers(images, bn_prior)
            matches.append(match)
        if self.consensus is not None:
            total = total + attack.group_weight * group_consistency(free[0], self.consensus)
        return total, matches[0] if len(matches) == 1 else torch.stack(matches).mean()

    def stepper(self) -> AdamStep | LbfgsStep:
        attack = self.attack

        def seen(match: float) -> None:
            self.best.see(match, self.free)

        if attack.optimizer == "lbfgs":
            return LbfgsStep(self.free, self.objective, seen, lr=attack.lr, box=attack.box)
        return AdamStep(self.free, self.objective, seen, lr=attack.lr, signed=attack.signed,
                        box=attack.box, schedule=attack.lr_schedule,
                        plateau_milestones=attack.plateau_milestones(), gradient=self.gradient)

    def run(self, bar, stop: StopRule | None) -> int:
        """Optimise for ``attack.iterations`` steps or until ``stop`` ends it; the steps used."""
        attack, history = self.attack, self.ctx.history
        step, last = self.stepper(), attack.iterations - 1
        for it in range(attack.iterations):
            if attack.group > 1 and it > 0 and it % attack.group_every == 0:
                self.consensus = self.free[0].detach().mean(0)
            match = step(it)
            if attack.on_iterate is not None:
                attack.on_iterate(it, self.free[0].detach())
            ended = stop is not None and (stop.out_of_time() or (stop.plateau(match)
                                                                 and not self._decayed(step, stop, it)))
            if it % 10 == 0 or it == last or ended:
                history.append(match)
                bar.set_postfix(grad_loss=f"{match:.4f}")
            bar.update(1)
            if ended:
                return it + 1
        return attack.iterations

    @staticmethod
    def _decayed(step: AdamStep | LbfgsStep, stop: StopRule, it: int) -> bool:
        """At a plateau: decay the lr early if the schedule has a decay left (and go on)."""
        if step.plateau(it):
            stop.reset()
            return True
        return False

    def candidates(self) -> list[Candidate]:
        """The restart's result: its last iterate, or its best one where that scores lower."""
        if self.attack.group > 1:
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
            found = [self.candidate([member, *rest]) for member in self.attack._members(group_free[0])]
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
            raw = self.attack.images(free[0])
            images = raw.clamp(0, 1)
        labels = self.labels_of(free).detach()
        if known is not None and torch.equal(raw, images):
            return images, labels, known
        check = images.clone().requires_grad_(True)
        loss = self.attack.distance(self.predict(check, labels), self.ctx.setup.target)
        return images, labels, float(loss.detach())


def rank(found: list[Candidate]) -> list[int]:
    """Candidate indices by gradient loss, lowest first, NaN last."""
    return sorted(range(len(found)), key=lambda i: (math.isnan(found[i][2]), found[i][2]))

