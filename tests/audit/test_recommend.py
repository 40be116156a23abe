"""Picking the cheapest defense setting that does not leak (gradleak.audit.recommend)."""

import pytest

from gradleak.audit.recommend import (
    COST_DISTORTION,
    Bisection,
    accuracy_drops,
    largest_layers,
    pick_defense,
)


def point(key, verdict, cost, share=0.0):
    return {"key": key, "defense": key.split("-")[0], "param": None, "value": None,
            "verdict": verdict, "at_risk_share": share, "cost": cost}


def test_cheapest_safe_setting_within_the_budget_wins():
    points = [point("qsgd-bits=1", "does not leak", 1.5), point("topk-0.9", "leaks", 0.1, 1.0),
              point("clip-0.01", "does not leak", 0.4), point("gaussian-0.25", "does not leak", 3.0)]
    out = pick_defense(points, max_drop=2.0)
    assert out["status"] == "recommended" and out["choice"]["key"] == "clip-0.01"


def test_ties_keep_the_grid_order():
    points = [point("a", "does not leak", 0.0), point("b", "does not leak", 0.0)]
    assert pick_defense(points, max_drop=2.0)["choice"]["key"] == "a"


def test_none_within_budget_says_so_and_shows_the_best_available():
    points = [point("qsgd-bits=1", "does not leak", 5.0), point("topk-0.9", "leaks", 0.1, 0.7),
              point("clip-0.01", "inconclusive", 0.2, 0.3)]
    out = pick_defense(points, max_drop=2.0)
    assert out["status"] == "none qualifies" and out["choice"] is None
    assert out["best_available"]["key"] == "qsgd-bits=1"  # lowest at-risk share
    assert "cost more than 2" in out["reason"]


def test_nothing_safe():
    out = pick_defense([point("topk-0.9", "leaks", 0.1, 0.7)], max_drop=2.0)
    assert out["status"] == "none qualifies" and "no evaluated setting" in out["reason"]


def test_distortion_costs_ignore_the_accuracy_budget():
    points = [point("qsgd-bits=1", "does not leak", 8.0), point("clip-0.01", "does not leak", 0.9)]
    out = pick_defense(points, max_drop=2.0, cost=COST_DISTORTION)
    assert out["choice"]["key"] == "clip-0.01"


def test_accuracy_drops_and_layers():
    drops = accuracy_drops({"none": 0.8, "qsgd": 0.75, "x": None})
    assert drops["none"] == 0.0 and abs(drops["qsgd"] - 5.0) < 1e-9 and drops["x"] is None
    assert largest_layers([("a", 10), ("b", 300), ("c", 20), ("d", 5)], 2) == ["b", "c"]


@pytest.mark.parametrize("first_safe", [0, 1, 2, 3, 4, 5])
def test_bisection_finds_the_weakest_safe_setting(first_safe):
    from gradleak.defenses.grid import GridPoint

    b = Bisection([GridPoint("topk", "sparsity", v) for v in (0.6, 0.7, 0.8, 0.9, 0.95)])
    probed = []
    while (p := b.probe()) is not None:
        probed.append(p.value)
        b.record([0.6, 0.7, 0.8, 0.9, 0.95].index(p.value) >= first_safe)
    assert b.lo == first_safe and len(probed) <= 3


def test_a_training_that_does_not_learn_resolves_no_cost():
    from gradleak.audit.recommend import LEARN_MARGIN, learning_check

    # 10 classes: chance is 10 %; 14 % is within the margin, so every drop is noise.
    why = learning_check([0.14, 0.13, 0.15], [0.10, 0.09, 0.11], 10)
    assert why.startswith("not resolved: the undefended training does not learn (accuracy 14.0 %")
    assert learning_check([0.60, 0.62], [0.10, 0.10], 10) is None
    # A causal LM: chance (1 / vocabulary) is ~0, the untrained model's accuracy is the floor.
    assert learning_check([0.12], [0.11], 8192) is not None
    assert learning_check([0.12 + LEARN_MARGIN / 100 + 0.01], [0.11], 8192) is None
    assert learning_check([], [], 10) is None


def test_a_defense_with_only_an_exclusion_still_gets_its_adaptive_attacker():
    from gradleak.audit.search import adaptive_for

    assert adaptive_for("ig", "soteria")  # the pruned layer left out: Balunovic et al. 2022
    assert adaptive_for("ig", "topk") and not adaptive_for("ig", "none")
    assert not adaptive_for("analytic", "soteria")  # no adaptive mode


def test_a_setting_only_the_adaptive_attack_leaks_is_broken_by_it(monkeypatch):
    from types import SimpleNamespace

    from gradleak.audit.search import Attacker, Probe
    from gradleak.defenses.grid import GridPoint

    level = SimpleNamespace(name="L0-basic")
    plain, adaptive = Attacker(level, False), Attacker(level, True)
    probe = Probe(GridPoint("soteria", "soteria_rate", 0.6), [plain, adaptive])
    probe.done = 3
    leaks = {0: (False, True), 1: (True, True), 2: (False, False)}  # (plain, adaptive) per trial
    monkeypatch.setattr(Probe, "_evidence_of", lambda self, i, rows: [
        SimpleNamespace(run_leaked=v) for v in leaks[i]])
    leaked_by, broken_by = probe._leaks_by_attacker({}, [0, 1])
    assert leaked_by == {"L0-basic": 1, "L0-basic+adaptive": 2}
    assert broken_by == ["L0-basic+adaptive"]  # trial 0: only the adaptive attack leaked
    leaks[0] = (True, True)
    assert probe._leaks_by_attacker({}, [0, 1])[1] == []


def _switch_setup(**kw):
    from types import SimpleNamespace

    cfg = SimpleNamespace(model=SimpleNamespace(name=kw.pop("model", "mlp")))
    return SimpleNamespace(cfg=cfg, text=kw.pop("text", False), fedavg=kw.pop("fedavg", False),
                           num_samples=kw.pop("num_samples", 4))


def test_model_and_training_switches_are_searched_where_they_apply():
    from gradleak.audit.switches import switch_points

    names = ["qsgd", "precode", "mixup", "instahide"]
    points, skipped = switch_points(names, {}, _switch_setup())
    assert [p.key for p in points] == ["precode-beta=0.001", "mixup-k=2", "mixup-k=4",
                                       "instahide-k=2", "instahide-k=4"]  # GradAttack's 4, and 2
    assert skipped == {}
    _, skipped = switch_points(names, {}, _switch_setup(fedavg=True, num_samples=2))
    assert set(skipped) == {"mixup", "instahide"} and "FedSGD" in skipped["mixup"]
    points, skipped = switch_points(names, {"instahide": [4]}, _switch_setup(num_samples=3))
    assert [p.key for p in points] == ["precode-beta=0.001", "mixup-k=2"]  # k <= 3 samples
    assert "fewer than client.mix_k" in skipped["instahide"]
    _, skipped = switch_points(names, {}, _switch_setup(num_samples=1))
    assert "holds 1 sample, fewer than client.mix_k (at least 2)" in skipped["mixup"]
    _, skipped = switch_points(names, {}, _switch_setup(model="my.py:Net"))
    assert "gradleak's own models" in skipped["precode"]
    assert set(switch_points(names, {}, _switch_setup(text=True))[1]) == {"precode", "mixup",
                                                                         "instahide"}


def test_a_switch_is_judged_by_its_breaking_attack_once(monkeypatch):
    from types import SimpleNamespace

    from gradleak.audit import search
    from gradleak.defenses.grid import GridPoint

    levels = [SimpleNamespace(name="L0-basic"), SimpleNamespace(name="L2-distribution"),
              SimpleNamespace(name="L1-priors")]
    attack = {"L0-basic": "gias", "L2-distribution": "gias", "L1-priors": "ig"}
    monkeypatch.setattr(search, "level_config", lambda ladder, level, *a, **k: SimpleNamespace(
        attack=SimpleNamespace(name=attack[level.name])))
    setup = SimpleNamespace(cfg=SimpleNamespace(seed=0))
    foes = search.attackers(None, setup, {}, levels, "precode")
    assert [f.label for f in foes] == ["L0-basic", "L2-distribution", "L1-priors",
                                       "L1-priors+adaptive"]  # on the first IG level
    point = GridPoint("mixup", "k", 4)
    keys = search.attacker_keys(point, foes[-1])
    assert keys["attack.name"] == "mix-decode" and keys["threat.knows_mixing"] is True
    assert search.attacker_keys(point, foes[0]) == {}  # the level's own attack, unchanged
    assert search.defense_keys(point, None) == {"defense.name": "none", "client.mix": "mixup",
                                                "client.mix_k": 4}
    precode = search.attacker_keys(GridPoint("precode", "beta", 1e-3), foes[-1])
    assert precode == {"attack.name": "precode-analytic"}
    assert search.attacker_keys(GridPoint("topk", "sparsity", 0.9), foes[-1]) == {
        "attack.adaptive": True}


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_a_dp_sgd_setting_reaches_the_run_whatever_its_alias_says(sigma):
    # The base config holds both names of the DP keys (defense.dp_* and fl.dp_*): the grid's
    # value must win over the stale alias, or every DP-SGD setting would run the default sigma.
    from gradleak.audit.ladder import level_config, load_ladder, read_setup
    from gradleak.audit.search import defense_keys
    from gradleak.defenses.grid import GridPoint

    setup = read_setup(None, ["model.name=mlp", "model.hidden=[8]", "data.resolution=8"])
    ladder = load_ladder().for_setup(setup)
    level = next(lv for lv in ladder.levels if lv.level == 0)
    keys = defense_keys(GridPoint("dpsgd", "dp_noise_multiplier", sigma), setup)
    cfg = level_config(ladder, level, setup, ladder.budget("quick"), seed=0, extra=keys)
    assert cfg.defense.dp_noise_multiplier == sigma and cfg.fl.dp_noise_multiplier == sigma


def _breaker_search(monkeypatch, leaks):
    """A Search over stubbed runs: ``leaks[(key, foe)]`` says whether that attacker leaks."""
    from types import SimpleNamespace

    from gradleak.audit.search import Attacker, Probe, Search
    from gradleak.audit.verdict import RunEvidence, VerdictRule
    from gradleak.defenses.grid import GridPoint

    staged = []

    def stage(self, ladder, setup, budget, trials, foe, rows):
        todo = [i for i in range(self.done) if (i, self.foes[foe].label) not in self.runs]
        for i in todo:
            self.runs[(i, self.foes[foe].label)] = SimpleNamespace(run_id=f"{self.point.key}/{foe}/{i}")
        staged.append((self.point.key, foe))
        return [self.runs[(i, self.foes[foe].label)] for i in todo]

    def evidence(self, i, rows):
        out = []
        for foe, a in enumerate(self.foes):
            spec = self.runs.get((i, a.label))
            hit = leaks.get((self.point.key, foe), False)  # a bool, or the trials it leaks
            leaked = i in hit if isinstance(hit, set) else bool(hit)
            out.append(None if spec is None or spec.run_id not in rows else RunEvidence(
                seed=i, psnr=[30.0 if leaked else 10.0], lpips=[0.01 if leaked else 0.5],
                thresholds={}, leaked=[leaked]))
        return out

    monkeypatch.setattr(Probe, "stage", stage)
    monkeypatch.setattr(Probe, "_evidence_of", evidence)
    l0, l1 = SimpleNamespace(name="L0-basic"), SimpleNamespace(name="L1-priors")
    foes = [Attacker(l0, False, "ig"), Attacker(l0, True, "ig (adaptive)"),
            Attacker(l1, False, "ig"), Attacker(l1, True, "ig (adaptive)")]
    srch = Search(None, None, {}, list(range(15)), [l0, l1], VerdictRule(),
                  sweep=lambda batch, title, exp: {r.run_id: {} for r in batch}, train=False)
    for point in [GridPoint("soteria", "soteria_rate", 0.9), GridPoint("qsgd", "bits", 2),
                  GridPoint("precode", "beta", 1e-3)]:
        probe = srch.probes[point.key] = Probe(point, foes)
        srch.run_round([probe], "screen", foes=1)
    return srch, staged


def test_a_heuristic_that_passed_the_screen_meets_its_breaking_attack(monkeypatch):
    # only L0's adaptive attack (Soteria's layer left out) leaks: 2 of 3 screened trials, then
    # 2 of the next 3 (4 of 6 decides "leaks")
    leaks = {("soteria-soteria_rate=0.9", 1): {0, 1, 3, 4}}
    srch, staged = _breaker_search(monkeypatch, leaks)
    assert all(p.result["runs_leaked"] == 0 for p in srch.probes.values())
    staged.clear()
    srch.try_breakers({"soteria", "precode"})
    # the adaptive attackers only, of the listed heuristics only, on the screened trials; then
    # the broken one's attackers (plain first) on new trials until its "leaks" is decided
    first = [("precode-beta=0.001", 1), ("precode-beta=0.001", 3),
             ("soteria-soteria_rate=0.9", 1), ("soteria-soteria_rate=0.9", 3)]
    assert sorted(staged[:4]) == first
    assert staged[4:] == [("soteria-soteria_rate=0.9", i) for i in (0, 1, 3)]
    assert srch.probes["soteria-soteria_rate=0.9"].decided
    soteria = srch.probes["soteria-soteria_rate=0.9"].result
    assert soteria["verdict"] == "leaks" and (soteria["runs_leaked"], soteria["runs"]) == (4, 6)
    assert soteria["broken_by"] == ["L0-basic+adaptive"]
    assert soteria["broken_by_attack"] == ["ig (adaptive)"] and not soteria["confirmed"]
    precode = srch.probes["precode-beta=0.001"].result
    assert precode["verdict"] == "inconclusive" and precode["broken_by"] == []
    assert precode["attackers"] == ["L0-basic", "L0-basic+adaptive", "L1-priors+adaptive"]
    assert srch.probes["qsgd-bits=2"].result["attackers"] == ["L0-basic"]  # not a heuristic
    from gradleak.report.audit_verdict import _against

    assert "broken by ig (adaptive)" in _against(soteria)
    assert precode["attacks"] == ["ig", "ig (adaptive)", "ig (adaptive)"]
    assert ("held against ig (adaptive): L0-basic+adaptive, ig (adaptive): L1-priors+adaptive "
            "in 3 runs") in _against(precode)


def test_a_setting_rejected_or_confirmed_is_not_attacked_again(monkeypatch):
    leaks = {("soteria-soteria_rate=0.9", 0): True}  # the plain attack already rejects it
    srch, staged = _breaker_search(monkeypatch, leaks)
    srch.probes["precode-beta=0.001"].result["confirmed"] = True
    staged.clear()
    srch.try_breakers({"soteria", "precode"})
    assert staged == []
