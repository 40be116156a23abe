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

    ``test="settled"`` (the default): the plateau test runs once per ``window`` iterations
    (counted from the start or the last :meth:`reset`) and compares that window with the one
    before it, so it is never met before ``2 * window`` iterations and never compares the
    transition after an lr decay with the window before the decay. A plateau needs both

    * loss: the best gradient loss improved over the window by at most ``tolerance`` times the
      restart's first finite loss, and
    * image: the window's mean iterate moved from the previous window's by at most the mean
      length of one step within the window (the iterate only jitters around a point: signed
      Adam's steps keep the lr's size at any plateau), or by at most ``tolerance`` relative to
      its norm (it converges smoothly: plain Adam, L-BFGS).

    The image test keeps an early lr decay from cutting short a restart whose image still
    drifts while its loss barely moves (16 px ConvNet, seed 0, 2000 iterations: the loss test
    stopped at 623 iterations at 23.0 dB; the full run reached 73.7 dB, the settled test 73.4
    dB at 1700; docs/benchmarks.md).

    ``test="loss"``: the rule before issue 25, after every iteration: the best loss of the last
    ``window`` iterations improved on the best before them by at most ``tolerance`` of that
    best (relative), never before ``window + 1`` losses. The loss alone is a poor witness: the
    signed-Adam loss jitters, a lucky low sample sets the best, and a loss falling
    geometrically toward 0 keeps a relative gain long after the image stopped changing.

    ``seconds`` (None: no limit) is this restart's wall-clock budget, counted only while it runs
    (from construction or :meth:`resume` to :meth:`pause`), so that interleaved restarts
    (``attack.race``) each count their own time; racing may raise :attr:`seconds`.
    """

    def __init__(self, tolerance: float, window: int, seconds: float | None,
                 test: str = "settled") -> None:
        if window < 1:
            raise ValueError(f"stop window must be >= 1, got {window}")
        if test not in ("settled", "loss"):
            raise ValueError(f"stop test must be settled or loss, got {test!r}")
        self.tolerance, self.window, self.seconds, self.test = tolerance, window, seconds, test
        self.best, self.first, self.trace = math.inf, math.inf, []  # trace: the loss test's
        self.count, self.before = 0, math.inf  # settled: its window, the best loss before it
        self.spent, self.since = 0.0, time.perf_counter()
        self._image = _Settling()

    def plateau(self, match: float, variable: torch.Tensor | None = None) -> bool:
        """Whether the restart has stopped improving after this iteration's ``match`` and
        iterate ``variable`` (which the settled test needs)."""
        if math.isinf(self.first) and math.isfinite(match):
            self.first = match
        if match < self.best:  # False for NaN: a diverged iterate never counts as progress
            self.best = match
        if self.test == "loss":
            return self._relative_gain()
        if variable is None:
            raise ValueError("the settled stop test needs the iterate")
        return self._settled(variable.detach())

    def _settled(self, variable: torch.Tensor) -> bool:
        self._image.see(variable)
        self.count += 1
        if self.count < self.window:
            return False
        before, self.before, self.count = self.before, self.best, 0
        moved = self._image.close()
        if moved is None:  # the first window since the start or a reset
            return False
        if math.isinf(before):  # nothing finite before the window: plateau only if still nothing
            return math.isinf(self.best)
        distance, step, norm = moved
        return (before - self.best <= self.tolerance * abs(self.first)
                and distance <= max(step, self.tolerance * norm))

    def _relative_gain(self) -> bool:
        self.trace.append(self.best)
        if len(self.trace) <= self.window:
            return False
        before = self.trace[-self.window - 1]
        if math.isinf(before):  # nothing finite before the window: plateau only if still nothing
            return math.isinf(self.best)
        return before - self.best <= self.tolerance * abs(before)

    def reset(self) -> None:
        """Start a new window (after an early lr decay); the first loss stays the reference."""
        self.trace = self.trace[-1:] if self.trace else []
        self.count, self._image = 0, _Settling()

    def resume(self) -> None:
        """The restart runs again: its clock restarts."""
        self.since = time.perf_counter()

    def pause(self) -> None:
        """The restart waits (racing): the time since it resumed is spent."""
        if self.since is not None:
            self.spent += time.perf_counter() - self.since
            self.since = None

    def elapsed(self) -> float:
        """Seconds this restart has run."""
        return self.spent + (0.0 if self.since is None else time.perf_counter() - self.since)

    def out_of_time(self) -> bool:
        return self.seconds is not None and self.elapsed() >= self.seconds


class _Settling:
    """Window means of the iterate and its mean step length, for the settled stop test.

    Sums are kept as deviations from the window's first iterate, so that float32 keeps the small
    differences between window means that the test compares."""

    def __init__(self) -> None:
        self.anchor: torch.Tensor | None = None
        self.deviation: torch.Tensor | None = None
        self.last: torch.Tensor | None = None
        self.previous: torch.Tensor | None = None  # the previous window's mean
        self.count, self.path = 0, 0.0

    def see(self, x: torch.Tensor) -> None:
        """Add iterate ``x`` to the current window."""
        if self.anchor is None:
            self.anchor, self.deviation = x.clone(), torch.zeros_like(x)
        else:
            self.deviation += x - self.anchor
        if self.last is not None:
            self.path += float((x - self.last).norm())
        self.last, self.count = x.clone(), self.count + 1

    def close(self) -> tuple[float, float, float] | None:
        """End the window: (distance between its mean and the previous window's, its mean step,
        the norm of its mean), None for the first window."""
        mean = self.anchor + self.deviation / self.count
        moved = None
        if self.previous is not None:
            moved = (float((mean - self.previous).norm()), self.path / max(self.count - 1, 1),
                     float(mean.norm()))
        self.previous, self.anchor, self.deviation, self.count, self.path = mean, None, None, 0, 0.0
        return moved
