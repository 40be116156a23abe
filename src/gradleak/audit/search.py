"""The recommendation's search: every probed defense setting against the strongest attacker.

A setting must withstand every honest-but-curious level that leaks without a defense, each with
the non-adaptive attack and, where possible, the adaptive one (:class:`Attacker`). A trial (one
seed and its victims) leaks under the setting when any attacker reconstructs one of its samples
(:func:`gradleak.audit.verdict.merge`); the setting's verdict is the ladder's sequential rule over
trials, run in rounds until decided (:class:`Probe`). Each defense's grid, weakest to strongest,
is bisected on a screen (one round of trials, the first attacker only: a leak rejects a setting
soundly) for its weakest setting in which no trial leaked (:class:`Bisection`, all probes of a
round in one sweep); :meth:`Search.confirm` then runs every attacker on a passing setting, and
more rounds, until its verdict is decided; :meth:`Search.try_breakers` runs the adaptive
attackers of a heuristic's unconfirmed passing settings on their screened trials.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gradleak.audit.ladder import Ladder, Level, Setup, Trial, level_config
from gradleak.audit.scenarios import run_spec
from gradleak.audit.switches import breaker_keys, is_switch, switch_keys
from gradleak.audit.utility import UTILITY_TRIALS
from gradleak.audit.verdict import INCONCLUSIVE, SAFE, RunEvidence, VerdictRule, level_verdict, merge
from gradleak.config import flatten
from gradleak.defenses.grid import GridPoint
from gradleak.runs.spec import RunSpec

EXPERIMENT = "audit-recommend"
Sweep = Callable[[list[RunSpec], str, str], dict[str, dict]]
Foes = int | Sequence[int] | None  # the first n attackers of a probe, the given indices, or all


def adaptive_for(attack_name: str, defense: str) -> bool:
    """Whether the attack can adapt to ``defense``: the defense registered a differentiable
    surrogate or the tensors its adaptive attacker leaves out (Soteria's pruned layer), and the
    attack overrides :meth:`~gradleak.attacks.base.Attack.adapt`."""
    from gradleak.attacks import ATTACKS
    from gradleak.attacks.base import Attack
    from gradleak.defenses.surrogate import EXCLUSIONS, SURROGATES

    if defense == "none" or (defense not in SURROGATES.names()
                             and defense not in EXCLUSIONS.names()):
        return False
    return ATTACKS.get(attack_name).adapt is not Attack.adapt


LORA = "lora"  # a text model's partial-update setting (model.lora_rank), searched as a defense


def lora_points(ranks: list[int], current: int) -> list[GridPoint]:
    """LoRA configurations for a text client (``model.lora_rank``, ranks from the weakest
    privacy to the strongest: large to small), only ranks below the one it already uses."""
    chosen = sorted({int(r) for r in ranks if current <= 0 or int(r) < current}, reverse=True)
    return [GridPoint(LORA, "rank", r) for r in chosen]


def defense_keys(point: GridPoint, setup: Setup) -> dict[str, Any]:
    """The config keys of one setting. Under FedAvg signSGD sends ``mean|v| * sign(v)``: the
    server applies updates with step 1, so bare signs would wreck training by construction.
    A LoRA point trains and shares only rank-``value`` adapters, undefended."""
    if point.defense == LORA:
        return {"defense.name": "none", "model.lora_rank": point.value}
    if is_switch(point.defense):  # PRECODE, MixUp, InstaHide (gradleak.audit.switches)
        return switch_keys(point)
    keys: dict[str, Any] = {"defense.name": point.defense}
    if point.param is not None:
        keys[f"defense.{point.param}"] = point.value
    if point.defense == "signsgd" and setup.fedavg:
        keys["defense.scale_sign"] = True
    return keys


@dataclass(frozen=True)
class Attacker:
    """One attack a defense setting must withstand: a leaking level, adaptive or not."""

    level: Level
    adaptive: bool
    attack: str = ""  # the attack in words: "ig", "ig (adaptive)", a breaking attack's name

    @property
    def label(self) -> str:
        return f"{self.level.name}{'+adaptive' if self.adaptive else ''}"


def attackers(ladder: Ladder, setup: Setup, budget: dict[str, Any], leaking: list[Level],
              defense: str) -> list[Attacker]:
    """Every leaking level, non-adaptive, and adaptive too where that is possible (a model or
    training switch: its breaking attack, :func:`~gradleak.audit.switches.breaker_keys`)."""
    out, names = [], {}
    for level in leaking:
        names[level.name] = level_config(ladder, level, setup, budget, seed=setup.cfg.seed).attack.name
    # A switch's breaking attack runs once, on the first leaking level that runs IG (its keys
    # are GIA-O's): it replaces the attack, whatever the level's prior knowledge.
    breaker = next((lv.name for lv in leaking if names[lv.name] == "ig"), None)
    for level in leaking:
        out.append(Attacker(level, False, names[level.name]))
        if is_switch(defense) and level.name == breaker:
            out.append(Attacker(level, True, breaker_keys(defense)["attack.name"]))
        elif not is_switch(defense) and adaptive_for(names[level.name], defense):
            out.append(Attacker(level, True, f"{names[level.name]} (adaptive)"))
    return out


def attacker_keys(point: GridPoint, attacker: Attacker) -> dict[str, Any]:
    """The attack keys of ``attacker`` against ``point``: ``attack.adaptive``, or a switch's
    breaking attack in place of the level's."""
    if is_switch(point.defense):
        return breaker_keys(point.defense) if attacker.adaptive else {}
    return {"attack.adaptive": attacker.adaptive}


def privacy_runs(ladder: Ladder, setup: Setup, budget: dict[str, Any], trials: list[Trial],
                 point: GridPoint, foes: list[Attacker]) -> dict[str, list[RunSpec]]:
    """Per attacker, its runs of ``point`` on ``trials`` (kind ``defended_attack``)."""
    keys = defense_keys(point, setup)
    return {a.label: [run_spec(EXPERIMENT, f"{point.key} vs {a.label}", level_config(
        ladder, a.level, setup, budget, seed=t.seed,
        extra={**t.keys(), **keys, **attacker_keys(point, a)}), kind="defended_attack",
        labels={"defense": point.key, "attacker": a.label}) for t in trials] for a in foes}


def utility_runs(ladder: Ladder, setup: Setup, budget: dict[str, Any],
                 point: GridPoint) -> list[RunSpec]:
    """The paired FL trainings of ``point`` (seeds ``seed .. seed + UTILITY_TRIALS - 1``)."""
    fl = dict(flatten({"fl": ladder.recommend.get("fl") or {}}))
    base = next(lv for lv in ladder.levels if lv.level == 0)
    return [run_spec(EXPERIMENT, point.key, level_config(
        ladder, base, setup, budget, seed=setup.cfg.seed + i,
        extra={**fl, **setup.user_fl, **defense_keys(point, setup)}), kind="privacy_utility",
        labels={"utility": point.key}, options={"attack": False}) for i in range(UTILITY_TRIALS)]


@dataclass
class Bisection:
    """Binary search for the weakest setting of one defense that does not leak, over its grid
    ordered from the weakest to the strongest setting: ``lo``..``hi`` bracket the first safe
    index (``hi = len``: none yet). An ``inconclusive`` setting counts as not safe. Every probe
    is measured; a grid that is not monotonic shows in :func:`monotonic_breaks`."""

    points: list[GridPoint]
    lo: int = 0
    hi: int = -1

    def __post_init__(self) -> None:
        if self.hi < 0:
            self.hi = len(self.points)

    def probe(self) -> GridPoint | None:
        return self.points[(self.lo + self.hi) // 2] if self.lo < self.hi else None

    def record(self, safe: bool) -> None:
        mid = (self.lo + self.hi) // 2
        if safe:
            self.hi = mid
        else:
            self.lo = mid + 1


def bisections(grid: list[GridPoint]) -> list[Bisection]:
    """One search per defense of ``grid`` (``none`` left out), in the grid's order."""
    by: dict[str, list[GridPoint]] = {}
    for p in grid:
        if p.defense != "none":
            by.setdefault(p.defense, []).append(p)
    return [Bisection(points) for points in by.values()]


@dataclass
class Probe:
    """One defense setting under evaluation: its attackers' runs so far, round by round. Within a
    round the attackers run one after another and a trial one of them leaked is not attacked
    again (it is decided), so a setting that leaks costs about one attacker's runs."""

    point: GridPoint
    foes: list[Attacker]
    runs: dict[tuple[int, str], RunSpec] = field(default_factory=dict)  # (trial, attacker)
    done: int = 0  # trials given to the attackers so far
    result: dict[str, Any] | None = None  # the latest evaluation
    decided: bool = False

    def stage(self, ladder: Ladder, setup: Setup, budget: dict[str, Any], trials: list[Trial],
              foe: int, rows: dict[str, dict]) -> list[RunSpec]:
        """The runs of attacker ``foe`` on every opened trial it has not attacked yet and no
        attacker has leaked (so a later stage backfills the trials of the screen)."""
        a = self.foes[foe]
        todo = [i for i in range(self.done)
                if (i, a.label) not in self.runs and not self._leaked(i, rows)]
        specs = privacy_runs(ladder, setup, budget, [trials[i] for i in todo], self.point, [a])
        for i, spec in zip(todo, specs[a.label], strict=True):
            self.runs[(i, a.label)] = spec
        return specs[a.label]

    def next_round(self, size: int, total: int) -> bool:
        """Open the next round of trials; False when none is left."""
        opened = min(self.done + size, total) - self.done
        self.done += opened
        return opened > 0

    def _evidence_of(self, i: int, rows: dict[str, dict]) -> list[RunEvidence | None]:
        out = []
        for a in self.foes:
            spec = self.runs.get((i, a.label))
            out.append(RunEvidence.from_row(rows[spec.run_id])
                       if spec is not None and spec.run_id in rows else None)
        return out

    def _leaks_by_attacker(self, rows: dict[str, dict], idx: list[int]
                           ) -> tuple[dict[str, int], list[str]]:
        """Trials each of the attackers ``idx`` leaked, and the adaptive ones that leaked a trial
        no non-adaptive one did: the attacks that *break* the defense (Balunovic et al. 2022)."""
        used = [self.foes[j] for j in idx]
        leaked_by = {a.label: 0 for a in used}
        broken: set[str] = set()
        for i in range(self.done):
            every = self._evidence_of(i, rows)
            ev = [every[j] for j in idx]
            hits = {a.label for a, e in zip(used, ev, strict=True) if e is not None and e.run_leaked}
            for label in hits:
                leaked_by[label] += 1
            if hits and not any(not a.adaptive and a.label in hits for a in used):
                broken |= {a.label for a in used if a.adaptive and a.label in hits}
        return leaked_by, sorted(broken)

    def _leaked(self, i: int, rows: dict[str, dict]) -> bool:
        return any(e is not None and e.run_leaked for e in self._evidence_of(i, rows))

    def chosen(self, foes: Foes) -> list[int]:
        """The indices of ``foes``: the first ``n`` attackers, the given ones, or all."""
        if foes is None:
            return list(range(len(self.foes)))
        if isinstance(foes, int):
            return list(range(min(foes, len(self.foes))))
        return sorted({i for i in foes if 0 <= i < len(self.foes)})

    def evaluate(self, rows: dict[str, dict], rule: VerdictRule, *, more: bool,
                 foes: Foes = None) -> dict[str, Any]:
        """The verdict over the opened trials, a trial being the union of the chosen attackers'
        runs (all by default: only then can the verdict be "does not leak")."""
        idx = self.chosen(foes)
        used = [self.foes[i] for i in idx]
        decided = level_verdict([merge([self._evidence_of(i, rows)[j] for j in idx])
                                 for i in range(self.done)], rule, more=more)
        if len(used) < len(self.foes) and decided["verdict"] == SAFE:
            decided = decided | {"verdict": INCONCLUSIVE, "reason": decided["reason"] + (
                f"; screened by {', '.join(a.label for a in used)} only, not confirmed "
                "against every attacker")}
        mine = [rows[r.run_id] for r in self.runs.values() if r.run_id in rows]
        dist = [r["distortion"] for r in mine if isinstance(r.get("distortion"), (int, float))]
        p = self.point
        if is_switch(p.defense):  # the update is not post-processed: no distortion to compare
            dist = []
        leaked_by, broken_by = self._leaks_by_attacker(rows, idx)
        self.result = {"key": p.key, "defense": p.defense, "param": p.param, "value": p.value,
                       "attackers": [a.label for a in used],
                       "attacks": [a.attack or a.label for a in used], "leaked_by": leaked_by,
                       "broken_by": broken_by, "broken_by_attack": sorted(
                           {a.attack or a.label for a in used if a.label in broken_by})} | {
                       k: decided[k] for k in (
                           "verdict", "reason", "at_risk_share", "leaked_share", "runs",
                           "runs_leaked", "run_leak_rate", "bound")} | {
                       "distortion": sum(dist) / len(dist) if dist else None,
                       "confirmed": len(used) == len(self.foes)}
        self.decided = not decided["continue"]
        return self.result


@dataclass
class Found:
    """What :func:`search` measured: settings (grid order), paired accuracies and test sizes."""

    points: list[dict[str, Any]]
    accuracy: dict[str, list[float | None]]
    test_samples: dict[str, int | None]
    initial: dict[str, list[float | None]] = field(default_factory=dict)  # round-0 accuracies
    epsilon: dict[str, list[float | None]] = field(default_factory=dict)  # DP-SGD: max client ε


@dataclass
class Search:
    """The recommendation's search state over one sweep function (see the module docstring)."""

    ladder: Ladder
    setup: Setup
    budget: dict[str, Any]
    trials: list[Trial]
    leaking: list[Level]
    rule: VerdictRule
    sweep: Sweep
    train: bool
    probes: dict[str, Probe] = field(default_factory=dict)
    utility: dict[str, list[RunSpec]] = field(default_factory=dict)
    rows: dict[str, dict] = field(default_factory=dict)

    def probe(self, point: GridPoint) -> Probe:
        if point.key not in self.probes:
            self.probes[point.key] = Probe(point, attackers(self.ladder, self.setup, self.budget,
                                                            self.leaking, point.defense))
        return self.probes[point.key]

    def run_round(self, probes: list[Probe], title: str, *, foes: Foes = None,
                  new: bool = True, staged: bool = True) -> None:
        """A round for ``probes`` (``new``: open the next trials first): the chosen attackers
        (:meth:`Probe.chosen`; default all), then evaluate. ``staged``: one attacker after
        another, one sweep each, skipping trials already leaked (cheap when settings leak);
        otherwise every attacker in one sweep (parallel, for a setting expected to hold)."""
        if new:
            probes = [p for p in probes if p.next_round(self.rule.round_size, len(self.trials))]
        batch: list[RunSpec] = []
        for foe in range(max((len(p.foes) for p in probes), default=0)):
            batch += [s for p in probes if foe in p.chosen(foes)
                      for s in p.stage(self.ladder, self.setup, self.budget, self.trials, foe,
                                       self.rows)]
            if batch and staged:
                self.rows |= self.sweep(batch, title, EXPERIMENT)
                batch = []
        if batch:
            self.rows |= self.sweep(batch, title, EXPERIMENT)
        for p in probes:
            p.evaluate(self.rows, self.rule, more=p.done < len(self.trials), foes=foes)

    def screen(self, grid: list[GridPoint]) -> None:
        """Bisect every defense on one round each, attacked by the first attacker only (the
        plain attack of the strongest leaking level): a setting passes when no trial leaked.
        A leak by one attacker is a leak, so a rejection is sound; a pass is only a candidate
        until :meth:`confirm` has run every attacker."""
        searches = bisections(grid)
        while True:
            active = [(b, self.probe(pt)) for b in searches if (pt := b.probe()) is not None]
            if not active:
                return
            self.run_round([p for _, p in active if p.done == 0], "audit recommendation: screen",
                           foes=1)
            for b, p in active:
                b.record(p.result is not None and p.result["runs_leaked"] == 0)

    def measure_utility(self, points: list[GridPoint]) -> None:
        """The paired trainings of ``points`` (and of no defense), one sweep."""
        if not self.train:
            return
        batch = []
        for pt in [GridPoint("none"), *points]:
            if pt.key not in self.utility:
                self.utility[pt.key] = utility_runs(self.ladder, self.setup, self.budget, pt)
                batch += self.utility[pt.key]
        if batch:
            self.rows |= self.sweep(batch, "audit recommendation: utility", EXPERIMENT)

    def try_breakers(self, defenses: set[str]) -> None:
        """The adaptive attackers of every setting of ``defenses`` that passed the screen but was
        not confirmed, on the screened trials (one sweep): a heuristic that its published attack
        breaks (Soteria, Outpost, PRECODE, MixUp, InstaHide) is then listed as "broken by
        <attack>" rather than as an untested candidate. A broken setting gets further rounds
        of the same attackers until its ``leaks`` is decided; one that held stays unconfirmed."""
        todo = [(p, [0] + [i for i, a in enumerate(p.foes) if a.adaptive])
                for p in self.probes.values()
                if p.point.defense in defenses and p.result and p.result["runs_leaked"] == 0
                and not p.result["confirmed"] and any(a.adaptive for a in p.foes)]
        title = "audit recommendation: breaking attacks"
        batch = [s for p, idx in todo for i in idx[1:]
                 for s in p.stage(self.ladder, self.setup, self.budget, self.trials, i, self.rows)]
        if batch:
            self.rows |= self.sweep(batch, title, EXPERIMENT)
        for p, idx in todo:
            p.evaluate(self.rows, self.rule, more=p.done < len(self.trials), foes=idx)
        for p, idx in todo:
            while p.result["broken_by"] and not p.decided and p.done < len(self.trials):
                self.run_round([p], title, foes=idx)

    def confirm(self, probe: Probe) -> dict[str, Any]:
        """Every attacker on the screened trials, then more rounds of ``probe`` until its
        verdict is decided (or trials run out)."""
        title = f"audit recommendation: confirm {probe.point.key}"
        self.run_round([probe], title, new=False, staged=False)
        while not probe.decided and probe.done < len(self.trials):
            self.run_round([probe], title, staged=False)
        return probe.result or {}

    def found(self, grid: list[GridPoint]) -> Found:
        accuracy = {k: [self.rows[r.run_id].get("final_accuracy") if r.run_id in self.rows
                        else None for r in specs] for k, specs in self.utility.items()}
        tests = {k: next((self.rows[r.run_id].get("test_samples") for r in specs
                          if r.run_id in self.rows), None) for k, specs in self.utility.items()}
        initial = {k: [_first_accuracy(self.rows.get(r.run_id)) for r in specs]
                   for k, specs in self.utility.items()}
        epsilon = {k: [(self.rows.get(r.run_id) or {}).get("max_epsilon") for r in specs]
                   for k, specs in self.utility.items()}
        rank = {p.key: i for i, p in enumerate(grid)}
        points = sorted((p.result for p in self.probes.values() if p.result),
                        key=lambda e: rank[e["key"]])
        return Found(points, accuracy, tests, initial, epsilon)


def _first_accuracy(row: dict[str, Any] | None) -> float | None:
    """A utility run's test accuracy before training (round 0), when it was stored."""
    acc = ((row or {}).get("result") or {}).get("accuracy") or []
    return acc[0] if acc and isinstance(acc[0], (int, float)) else None
