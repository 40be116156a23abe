"""DP-SGD as the defense ``dpsgd``: the same training as ``fl.dp=true``, the ``fl.dp_*`` keys as
aliases of ``defense.dp_*``, and an update that differs from the undefended one."""

from __future__ import annotations

import pytest
import torch

from gradleak.config import load_config
from gradleak.defenses import DEFENSES
from gradleak.defenses.grid import build_grid
from gradleak.errors import GradleakError
from gradleak.fl.dp import dp_settings
from gradleak.fl.server import run_federated
from gradleak.scenario import Scenario

TINY = ["model.name=mlp", "model.hidden=[16]", "data.resolution=16", "data.num_samples=2"]


def _update(*sets: str) -> dict[str, torch.Tensor]:
    return Scenario.from_config(load_config(None, [*TINY, *sets])).client_round().update.tensors


def test_aliases_hold_one_value_whichever_spelling_is_set():
    cfg = load_config(None, ["fl.dp_noise_multiplier=0.7", "defense.dp_max_grad_norm=0.3"])
    assert cfg.defense.dp_noise_multiplier == cfg.fl.dp_noise_multiplier == 0.7
    assert cfg.defense.dp_max_grad_norm == cfg.fl.dp_max_grad_norm == 0.3
    with pytest.raises(GradleakError, match="fl.dp_delta"):
        load_config(None, ["fl.dp_delta=2"])
    with pytest.raises(GradleakError, match="defense.dp_delta"):
        load_config(None, ["defense.dp_delta=0"])


def test_dp_settings_come_from_the_defense_or_fl_dp():
    assert dp_settings(load_config(None, [])) is None
    dp = dp_settings(load_config(None, ["defense.name=dpsgd", "defense.dp_noise_multiplier=0.5"]))
    assert (dp.noise_multiplier, dp.max_grad_norm, dp.delta) == (0.5, 1.0, 1e-5)
    legacy = dp_settings(load_config(None, ["fl.dp=true", "fl.dp_noise_multiplier=0.5"]))
    assert legacy == dp
    assert "dpsgd" in DEFENSES.names()


def test_dpsgd_defense_is_fl_dp_training_and_changes_the_update():
    plain = _update()
    defended = _update("defense.name=dpsgd", "defense.dp_noise_multiplier=0.5")
    legacy = _update("fl.dp=true", "fl.dp_noise_multiplier=0.5")
    assert plain.keys() == defended.keys()
    for name in plain:
        assert torch.equal(defended[name], legacy[name])
    assert any(not torch.allclose(plain[n], defended[n]) for n in plain)
    # Clipping alone (no noise): the summed per-sample gradients have norm <= N * C, over N.
    clipped = _update("defense.name=dpsgd", "defense.dp_noise_multiplier=0",
                      "defense.dp_max_grad_norm=1e-3")
    norm = torch.cat([t.flatten() for t in clipped.values()]).norm()
    assert 0 < float(norm) <= 1e-3 * (1 + 1e-4)


def test_dpsgd_defense_in_federated_training_reports_epsilon():
    cfg = load_config(overrides=["model.name=mlp", "model.hidden=[16]", "data.resolution=16",
                                 "fl.clients=3", "fl.fraction=1", "fl.rounds=1",
                                 "fl.victim_samples=2", "client.protocol=fedavg",
                                 "defense.name=dpsgd"])
    res = run_federated(cfg).result
    assert res.victim_epsilon is not None and res.victim_epsilon > 0 and res.delta == 1e-5


def test_dpsgd_has_a_strength_to_grid_over():
    points = build_grid(["dpsgd"])
    assert [p.key for p in points][:2] == ["none", "dpsgd-dp_noise_multiplier=0.1"]
