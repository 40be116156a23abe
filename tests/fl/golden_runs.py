"""Small federated runs whose accuracy curves and final states were recorded before fl/server.py
was split into aggregation / dp / server (issue 11): ``python -m tests.fl.golden_runs`` rewrites
``golden_fl.pt``; ``test_golden.py`` checks that the code still reproduces them bit for bit."""

from __future__ import annotations

from pathlib import Path

import torch

from gradleak.config import ClientConfig, DefenseConfig, FLConfig, ModelConfig, load_config
from gradleak.data.base import TensorImageDataset
from gradleak.defenses import build_defense
from gradleak.fl.server import run_federated, train_federated
from gradleak.models import build_model

GOLDEN = Path(__file__).with_name("golden_fl.pt")
SKIMAGE = ["model.name=mlp", "model.hidden=[16]", "data.resolution=16", "fl.clients=5",
           "fl.fraction=0.6", "fl.rounds=3", "fl.victim_samples=2", "fl.attack_round=2",
           "client.protocol=fedavg", "client.batch_size=8", "client.lr=0.1",
           "defense.name=gaussian", "defense.noise_multiplier=0.01", "fl.test_samples=64"]


def _toy(sizes: list[int], seed: int):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    ds = TensorImageDataset("toy", torch.rand(n, 3, 8, 8, generator=g),
                            torch.randint(0, 3, (n,), generator=g), ("a", "b", "c"))
    bounds = [0]
    for s in sizes:
        bounds.append(bounds[-1] + s)
    parts = [list(range(bounds[k], bounds[k + 1])) for k in range(len(sizes))]
    torch.manual_seed(seed)
    model = build_model(ModelConfig(name="mlp", hidden=[8]), num_classes=3, channels=3,
                        resolution=8, mean=ds.mean, std=ds.std)
    return ds, parts, model


def _summary(res) -> dict:
    return {"accuracy": list(res.accuracy), "final_state": res.final_state,
            "observed": res.observed.tensors, "sampled": res.sampled,
            "epsilon": dict(res.epsilon)}


def runs() -> dict[str, dict]:
    """The recorded scenarios: a config-driven skimage run (with a defense), DP-SGD with secure
    aggregation on a toy set, and FedSGD with partial participation and an empty client."""
    out = {"skimage": _summary(run_federated(load_config(overrides=SKIMAGE)).result)}
    ds, parts, model = _toy([4, 6, 9, 5], seed=2)
    out["dp_secagg"] = _summary(train_federated(
        model, ds, parts, client=ClientConfig(protocol="fedavg", local_epochs=2, batch_size=3,
                                              lr=0.3),
        fl=FLConfig(clients=4, fraction=0.75, rounds=3, secure_aggregation=True, dp=True,
                    dp_noise_multiplier=0.5, dp_max_grad_norm=1.0),
        test=ds, seed=4))
    ds, parts, model = _toy([5, 0, 7, 3, 6], seed=3)
    out["fedsgd"] = _summary(train_federated(
        model, ds, parts, client=ClientConfig(protocol="fedsgd", lr=0.5),
        fl=FLConfig(clients=5, fraction=0.6, rounds=4, attack_round=3),
        defense=build_defense(DefenseConfig(name="topk", sparsity=0.5)), test=ds, seed=1))
    return out


def record() -> None:
    from tests.build_signature import signature

    torch.save({**signature(), "runs": runs()}, GOLDEN)


if __name__ == "__main__":
    record()
