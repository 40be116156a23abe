"""Restart racing (``attack.race``): successive halving over an attack's restarts.

All restarts run a short first round (``attack.race_first`` iterations, by default
``attack.iterations // 8``); the best ``attack.race_keep`` fraction by the lowest gradient loss
each has reached (at least one) goes on to a round twice as long, and so on; the last round
ends at ``attack.iterations``. A restart is resumed between rounds (:meth:`Restart.advance`:
its optimiser state, lr schedule, stopping rule and best iterate carry over), so a survivor's
iterates are those it would have had without racing, and ``race_keep=1`` reproduces the unraced
run exactly. With ``attack.stop`` a restart that stopped is finished: it keeps competing with its
lowest loss at every later cut and takes a kept place when it ranks there. With
``attack.max_seconds`` an eliminated restart's unspent time passes to the restarts still running.

Every restart stays a candidate of the reconstruction: the survivors (never eliminated) first,
ranked by gradient loss, then the eliminated ones with the iterate they had when eliminated
(``attack.keep`` applied as usual). So the returned images always come from a survivor, and
WSRR, which counts leaks over all initialisations, counts an eliminated restart as it stood
when it was eliminated: under racing it measures the raced attack, not the unraced one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gradleak.attack_settings import MatchingSettings
from gradleak.attacks.restart import Candidate, Restart
from gradleak.attacks.steps import StopRule


def round_ends(settings: MatchingSettings) -> list[int]:
    """The iterations the rounds end at: ``first, 2 first, 4 first, ..., attack.iterations``."""
    total = settings.iterations
    first = settings.race_first if settings.race_first is not None else max(1, total // 8)
    ends, end = [], first
    while end < total:
        ends.append(end)
        end *= 2
    return [*ends, total]


def kept(contenders: list[int], scores: list[float], keep: float) -> list[int]:
    """The ``keep`` fraction of ``contenders`` (at least one) with the lowest ``scores`` (NaN
    last, ties to the earlier restart), in restart order."""
    count = max(1, math.ceil(round(keep * len(contenders), 9)))  # 0.3 * 10 is 3, not 4
    order = sorted(range(len(contenders)), key=lambda i: (math.isnan(scores[i]), scores[i]))
    return sorted(contenders[i] for i in order[:count])


@dataclass
class RaceRecord:
    """How a race went: the rounds' ends, the survivors, and whose each candidate is."""

    rounds: list[int]
    survivors: list[int]
    restart_of: list[int]  # per candidate (the engine's order, before ranking): its restart

    @property
    def tiers(self) -> list[int]:
        """Per candidate: 0 for a survivor's, 1 for an eliminated restart's (ranked after)."""
        alive = set(self.survivors)
        return [0 if r in alive else 1 for r in self.restart_of]

    def details(self, ranking: list[int]) -> dict[str, Any]:
        """The record for ``Reconstruction.details["race"]``, candidates in ranked order."""
        return {"rounds": self.rounds, "survivors": self.survivors,
                "restart_of": [self.restart_of[i] for i in ranking]}


def race(restarts: list[Restart], bar, settings: MatchingSettings) -> list[int]:
    """Run ``restarts`` (each with its :attr:`Restart.stop`) round by round; the survivors."""
    alive = list(range(len(restarts)))
    for end in round_ends(settings):
        for i in alive:
            if not restarts[i].finished:
                restarts[i].advance(bar, end)
        if all(restarts[i].finished for i in alive):
            break
        survivors = kept(alive, [restarts[i].lowest for i in alive], settings.race_keep)
        _hand_over([restarts[i].stop for i in alive if i not in survivors],
                   [restarts[i].stop for i in survivors if not restarts[i].finished])
        alive = survivors
    return alive


def _hand_over(out: list[StopRule | None], running: list[StopRule | None]) -> None:
    """Split the unspent time of the eliminated restarts evenly over those still running."""
    spare = sum(max(0.0, rule.seconds - rule.elapsed()) for rule in out
                if rule is not None and rule.seconds is not None)
    targets = [rule for rule in running if rule is not None and rule.seconds is not None]
    for rule in targets:
        rule.seconds += spare / len(targets)


def raced_restarts(restarts: list[Restart], bar, settings: MatchingSettings,
                   stop_rule: Callable[[], StopRule | None]
                   ) -> tuple[list[Candidate], list[int], list[float], RaceRecord]:
    """Race ``restarts`` (drawn in the unraced order); every restart's candidates, iterations
    used and loss history (restart by restart), and the record."""
    for restart in restarts:
        restart.stop = stop_rule()
    survivors = race(restarts, bar, settings)
    found, owner, history = [], [], []
    for index, restart in enumerate(restarts):
        mine = restart.candidates()
        found += mine
        owner += [index] * len(mine)
        history += restart.recorded()
    record = RaceRecord(rounds=round_ends(settings), survivors=survivors, restart_of=owner)
    return found, [r.used for r in restarts], history, record
