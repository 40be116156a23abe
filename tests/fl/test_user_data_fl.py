"""FL training on the user's own data without a test split: utility on a held-out part."""

from __future__ import annotations

import json

import numpy as np

from gradleak.config import load_config
from gradleak.defenses.grid import build_grid
from gradleak.experiments.privacy_utility import run_privacy_utility
from gradleak.fl.server import run_federated


def test_npz_without_test_split_trains_and_evaluates_on_disjoint_parts(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(40)  # every image distinct, so the parts can be told apart
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 4)
    cfg = load_config(None, ["data.dataset=npz", f"data.root={tmp_path / 'd.npz'}",
                             "data.resolution=8", "model.name=mlp", "model.hidden=[8]",
                             "client.protocol=fedavg", "fl.clients=2", "fl.fraction=1",
                             "fl.rounds=1", "fl.victim_samples=1", "attack.iterations=2"])
    run = run_federated(cfg)
    assert len(run.train) == 32 and len(run.test) == 8
    seen = {int(run.train[i][0][0, 0, 0] * 255 + 0.5) for i in range(len(run.train))}
    held = {int(run.test[i][0][0, 0, 0] * 255 + 0.5) for i in range(len(run.test))}
    assert not seen & held and len(seen | held) == 40
    result = run_privacy_utility(cfg, tmp_path / "pu", grid=build_grid(()))
    row = json.loads(result.json_path.read_text())["rows"][0]
    assert "held out" in row["test_data"] and "never used for training" in row["test_data"]
