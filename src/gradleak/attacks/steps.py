"""The GIA-O engine's optimiser steps and its stopping rule.

A step evaluates the objective on the current iterate, reports the gradient-matching loss to
``seen`` *before* updating (so the caller can snapshot the iterate the loss belongs to, without
an extra forward/backward), updates the free tensors and applies the box constraint.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable

import torch

Objective = Callable[[], tuple[torch.Tensor, torch.Tensor]]
Gradient = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # variable -> (grad, match)
Seen = Callable[[float | torch.Tensor], None]


class AdamStep:
    """Adam, on the sign of the image gradient when ``signed`` (Geiping et al.), then the lr
    schedule and the box constraint. ``free[0]`` is the image variable; the others (DLG's label
    logits) get their plain gradient."""

    def __init__(self, free: list[torch.Tensor], objective: Objective, seen: Seen, *, lr: float,
                 signed: bool, box: bool,
                 schedule: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler],
                 plateau_milestones: list[int] | None = None,
                 gradient: Gradient | None = None) -> None:
        self.free, self.objective, self.seen = free, objective, seen
        # gradient: the functional (compiled or batched) objective's image gradient and match,
        # used instead of objective() + autograd (only with a lone image variable)
        self.gradient = gradient
        self.signed, self.box = signed, box
        self.opt = torch.optim.Adam(free, lr=lr)
        # With plateau decays (attack.stop and the engine's own step decay) the lr is set
        # directly: x0.1 per milestone passed or plateau met, whichever count is larger.
        self.milestones = plateau_milestones
        self.scheduler = schedule(self.opt) if plateau_milestones is None else None
        self.base_lr, self.plateaus = lr, 0

    def __call__(self, it: int) -> float | torch.Tensor:
        variable = self.free[0]
        if self.gradient is not None:
            grad, match = self.gradient(variable)
            grads = [grad]
        else:
            total, match = self.objective()
            grads = torch.autograd.grad(total, self.free)
        value = match.detach()
        value = float(value) if value.ndim == 0 else value  # [R] for batched restarts
        self.seen(value)
        for v, g in zip(self.free, grads, strict=True):
            v.grad = g.sign() if self.signed and v is variable else g
        self.opt.step()
        if self.scheduler is not None:
            self.scheduler.step()
        else:
            self._set_lr(it + 1)
        if self.box:
            with torch.no_grad():
                variable.clamp_(0, 1)
        return value

    def _decays(self, done: int) -> int:
        return max(self.plateaus, bisect.bisect_right(self.milestones or [], done))

    def _set_lr(self, done: int) -> None:
        for group in self.opt.param_groups:
            group["lr"] = self.base_lr * 0.1 ** self._decays(done)

    def plateau(self, it: int) -> bool:
        """The loss stopped improving at iteration ``it``: decay the lr early if a decay is left
        (True: go on), else False (the restart is done)."""
        if self.milestones is None or self._decays(it + 1) >= len(self.milestones):
            return False
        self.plateaus = self._decays(it + 1) + 1
        self._set_lr(it + 1)
        return True


class LbfgsStep:
    """One L-BFGS step (up to 20 inner evaluations, each reported to ``seen``), then the box."""

    def __init__(self, free: list[torch.Tensor], objective: Objective, seen: Seen, *, lr: float,
                 box: bool) -> None:
        self.free, self.objective, self.seen, self.box = free, objective, seen, box
        self.opt = torch.optim.LBFGS(free, lr=lr, history_size=100, max_iter=20)
        self.last = float("nan")

    def _closure(self) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        total, match = self.objective()
        grads = torch.autograd.grad(total, self.free)
        for v, g in zip(self.free, grads, strict=True):
            v.grad = g
        self.last = float(match.detach())
        self.seen(self.last)  # L-BFGS evaluates several iterates per step; each counts
        return total.detach()

    def __call__(self, _it: int) -> float:
        self.opt.step(self._closure)
        if self.box:
            with torch.no_grad():
                self.free[0].clamp_(0, 1)
        return self.last

    def plateau(self, _it: int) -> bool:
        return False


class StopRule:
    """Ends a restart once it has stopped improving, or when its time is up (``attack.stop``).

    Plateau: the best gradient loss of the last ``window`` iterations improved on the best loss
    before them by at most ``tolerance`` (relative). It is never met before ``window + 1``
    losses have been seen since the start or the last :meth:`reset`. ``seconds`` (None: no
    limit) is this restart's wall-clock budget, counted from construction.
    """

    def __init__(self, tolerance: float, window: int, seconds: float | None) -> None:
        if window < 1:
            raise ValueError(f"stop window must be >= 1, got {window}")
        self.tolerance, self.window, self.seconds = tolerance, window, seconds
        self.best, self.trace = math.inf, []
        self.start = time.perf_counter()

    def plateau(self, match: float) -> bool:
        if match < self.best:  # False for NaN: a diverged iterate never counts as progress
            self.best = match
        self.trace.append(self.best)
        if len(self.trace) <= self.window:
            return False
        before = self.trace[-self.window - 1]
        if math.isinf(before):  # nothing finite before the window: plateau only if still nothing
            return math.isinf(self.best)
        return before - self.best <= self.tolerance * abs(before)

    def reset(self) -> None:
        """Start a new window (after an early lr decay)."""
        self.trace = self.trace[-1:] if self.trace else []

    def out_of_time(self) -> bool:
        return self.seconds is not None and time.perf_counter() - self.start >= self.seconds
