"""GradInversion's group consistency (Yin et al. 2021, Sec. 3.3) in the GIA-O engine."""

import pytest
import torch

from gradleak.attacks import build_attack
from gradleak.attacks.priors import group_consistency
from gradleak.config import AttackConfig, load_config
from gradleak.errors import GradleakError
from tests.attacks.test_inverting_gradients import _observe


def _spread(candidates: torch.Tensor) -> float:
    """Mean squared distance of the candidates from their mean."""
    return float((candidates - candidates.mean(0)).pow(2).mean())


def test_group_prior_is_zero_at_the_consensus_and_grows_with_distance():
    group = torch.rand(3, 2, 3, 4, 4)
    assert float(group_consistency(group, group.mean(0))) > 0
    same = group[:1].expand(3, -1, -1, -1, -1)
    assert float(group_consistency(same, same[0])) == 0.0
    # squared L2 per sample, averaged over members and samples
    assert float(group_consistency(torch.ones(2, 1, 3), torch.zeros(1, 3))) == pytest.approx(3.0)


def test_group_returns_every_member_and_their_consensus_ranked_by_loss():
    _, obs = _observe()
    rec = build_attack(AttackConfig(iterations=20, group=3, group_every=5, restarts=2))(obs, seed=0)
    assert rec.candidates.shape[0] == 2 * (3 + 1)
    assert rec.losses == sorted(rec.losses)
    # Within each restart one candidate is the mean of the other three (the consensus).
    flat = rec.candidates.flatten(1)
    consensus_like = [i for i in range(len(flat))
                      if any(torch.allclose(flat[i], flat[list(c)].mean(0), atol=1e-6)
                             for c in _triples(len(flat), i))]
    assert len(consensus_like) == 2


def _triples(n: int, skip: int):
    from itertools import combinations
    return combinations([j for j in range(n) if j != skip], 3)


def test_group_consistency_pulls_the_members_together():
    """Without the prior the members drift apart from their different starts; a strong prior
    keeps them near their consensus (same seeds, same budget)."""
    _, obs = _observe()
    spreads = {}
    for weight in (0.0, 10.0):
        cfg = AttackConfig(iterations=60, group=3, group_every=10, group_weight=weight)
        spreads[weight] = _spread(build_attack(cfg)(obs, seed=0).candidates)
    assert spreads[10.0] < 0.5 * spreads[0.0]


def test_group_size_one_is_the_plain_engine():
    _, obs = _observe()
    plain = build_attack(AttackConfig(iterations=15))(obs, seed=1)
    one = build_attack(AttackConfig(iterations=15, group=1, group_weight=5.0))(obs, seed=1)
    assert torch.equal(plain.candidates, one.candidates) and plain.losses == one.losses


def test_group_is_refused_where_it_does_not_apply():
    with pytest.raises(GradleakError, match="learn_labels"):
        build_attack(load_config(None, ["attack.name=dlg", "attack.group=2"]).attack)
    for name in ("ggl", "analytic", "imprint", "gias"):
        with pytest.raises(GradleakError, match=f"attack.group=2.*not {name}"):
            build_attack(load_config(None, [f"attack.name={name}", "attack.group=2"]).attack)
    assert build_attack(load_config(None, ["attack.name=gradinversion", "attack.group=4"]).attack).group == 4
