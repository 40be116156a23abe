"""Reference runs of the GIA-O engine, recorded before its refactor (issue 11 item 5).

Every case is a tiny 16 px problem run for 30 iterations; ``python -m tests.attacks.engine_cases``
rewrites ``data/engine_reference.pt`` (only do that when a change of results is intended).
``test_engine_reference.py`` checks that the engine reproduces the recorded outputs exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from gradleak.attacks import build_attack, observe
from gradleak.config import AttackConfig, ClientConfig, ModelConfig, ThreatConfig
from gradleak.fl.client import ClientSetup, client_round
from gradleak.models import build_model
from gradleak.threat import ThreatModel
from tests.conftest import photo

REFERENCE = Path(__file__).with_name("data") / "engine_reference.pt"
DEFAULTS = Path(__file__).resolve().parents[2] / "src" / "gradleak" / "configs" / "attacks"
SEEDS = (0, 1)

# name: (attack, attack overrides, model, norm, batch, protocol)
CASES = {
    "ig": ("ig", {}, "mlp", "none", 1, "fedsgd"),
    "ig-convnet-b2": ("ig", {"restarts": 2}, "convnet", "none", 2, "fedsgd"),
    "dlg": ("dlg", {}, "mlp", "none", 1, "fedsgd"),
    "idlg": ("idlg", {}, "mlp", "none", 1, "fedsgd"),
    "gradinversion": ("gradinversion", {"labels": "known"}, "convnet", "batch", 2, "fedsgd"),
    "rog": ("rog", {}, "mlp", "none", 1, "fedsgd"),
    "group2": ("ig", {"group": 2, "group_every": 10}, "mlp", "none", 2, "fedsgd"),
    "keep-best": ("ig", {"keep": "best", "lr": 1.0, "lr_decay": False}, "mlp", "none", 1, "fedsgd"),
    "keep-best-lbfgs": ("idlg", {"keep": "best", "labels": "known"}, "mlp", "none", 1, "fedsgd"),
    "lbfgs-box": ("ig", {"optimizer": "lbfgs", "lr": 0.5, "signed": False}, "mlp", "none", 1,
                  "fedsgd"),
    "ig-fedavg-wst": ("ig", {}, "mlp", "none", 2, "fedavg"),
}


def attack_config(name: str, **overrides) -> AttackConfig:
    """The attack's shipped defaults (configs/attacks/NAME.yaml) plus ``overrides``."""
    path = DEFAULTS / f"{name}.yaml"
    values = yaml.safe_load(path.read_text()) if path.exists() else {}
    return AttackConfig(**{"name": name, **values, **overrides})


def make_case(case: str, seed: int):
    """The attack and the observation of one reference case."""
    attack_name, overrides, model, norm, batch, protocol = CASES[case]
    names = ("astronaut", "chelsea", "coffee", "rocket")[:batch]
    images = torch.cat([photo(n, 16) for n in names])
    labels = torch.arange(batch) + 3
    torch.manual_seed(seed)
    net = build_model(ModelConfig(name=model, hidden=[64], width=4, norm=norm), num_classes=10,
                      channels=3, resolution=16, mean=(0.5,) * 3, std=(0.25,) * 3).eval()
    client = ClientConfig(protocol=protocol, local_epochs=1, batch_size=1, lr=0.1)
    setup = ClientSetup.from_config(client, batch)
    rnd = client_round(net, images, labels, setup, seed=seed)
    update = rnd.update
    threat = ThreatConfig(knows_bn_statistics=norm == "batch",
                          knows_client_config=protocol == "fedavg")
    obs = observe(model=net, update=update, threat=ThreatModel.from_config(threat), setup=setup,
                  labels=labels, input_shape=tuple(images.shape[1:]), num_classes=10,
                  bn_statistics=rnd.bn_statistics)
    cfg = attack_config(attack_name, iterations=30, **overrides)
    return build_attack(cfg), obs


def run_case(case: str, seed: int) -> dict[str, torch.Tensor]:
    """The reconstruction of one case as tensors (for torch.equal)."""
    attack, obs = make_case(case, seed)
    rec = attack(obs, seed=seed)
    return {"images": rec.images, "candidates": rec.candidates,
            "losses": torch.tensor(rec.losses, dtype=torch.float64),
            "history": torch.tensor(rec.history, dtype=torch.float64),
            "labels": torch.tensor(rec.labels)}


def record() -> None:
    torch.set_num_threads(1)
    from tests.build_signature import signature

    out = {**signature(),
           "runs": {f"{c}/{s}": run_case(c, s) for c in CASES for s in SEEDS}}
    REFERENCE.parent.mkdir(exist_ok=True)
    torch.save(out, REFERENCE)
    print(f"wrote {REFERENCE} ({len(out['runs'])} runs)")


if __name__ == "__main__":
    record()
