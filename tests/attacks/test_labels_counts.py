"""Count-based label rules (LLG, Geng, iLRG) on batches with repeated labels."""

import pytest
import torch

from gradleak.attacks.labels import LabelContext, counts_to_labels, infer_labels, llg_labels
from gradleak.config import ClientConfig, DataConfig, ModelConfig, load_config
from gradleak.data import build_dataset
from gradleak.errors import GradleakError
from gradleak.fl.client import ClientSetup, client_update
from gradleak.metrics import label_accuracy
from gradleak.models import build_model

SIZE = 16
K = 8
PHOTOS = ("hubble_deep_field", "chelsea", "coffee", "rocket", "astronaut", "immunohistochemistry",
          "retina", "motorcycle", "logo", "colorwheel")


def _model(name, seed, *, bias=True):
    torch.manual_seed(seed)
    return build_model(ModelConfig(name=name, width=8, hidden=[64], norm="none", bias=bias),
                       num_classes=10, channels=3, resolution=SIZE, mean=(0.5,) * 3,
                       std=(0.25,) * 3)


def _batch(seed):
    """8 photo crops from 4 classes, so labels repeat."""
    ds = build_dataset(DataConfig(resolution=SIZE))
    g = torch.Generator().manual_seed(seed)
    # Photos by name, so the batch does not depend on the dataset's class order.
    by_name = [ds.classes.index(n) for n in PHOTOS]
    classes = torch.tensor(by_name)[torch.randperm(10, generator=g)[:4]]
    labels = classes[torch.randint(0, 4, (K,), generator=g)]
    picks = [int(c) * 64 + int(torch.randint(0, 64, (1,), generator=g)) for c in labels]
    return ds.images[picks], ds.labels[picks]


def _accuracies(name, protocol):
    """Mean multiset accuracy per rule over 3 seeds; FedAvg with lr known and unknown."""
    scores: dict[str, list[float]] = {}
    for seed in range(3):
        model = _model(name, seed)
        x, y = _batch(seed)
        client = ClientConfig(protocol=protocol, lr=0.1, batch_size=4 if protocol == "fedavg" else None)
        setup = ClientSetup.from_config(client, K)
        direction = client_update(model, x, y, setup, seed=seed).gradient_direction()
        known = {"lr": 1.0} if protocol == "fedsgd" else {"lr": 0.1, "local_steps": setup.local_updates}
        for rule, kwargs in [("llg", {}), ("geng", known), ("ilrg", known), ("geng_free", {}),
                             ("ilrg_free", {})]:
            labels = infer_labels(rule.removesuffix("_free"), model, direction, K,
                                  input_shape=(3, SIZE, SIZE), seed=seed, **kwargs)
            assert len(labels) == K
            scores.setdefault(rule, []).append(label_accuracy(labels, y))
    return {rule: sum(v) / len(v) for rule, v in scores.items()}


@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
@pytest.mark.parametrize("name", ["mlp", "convnet"])
def test_count_rules_recover_repeated_labels(name, protocol):
    acc = _accuracies(name, protocol)
    assert max(acc["geng"], acc["ilrg"]) >= 0.9, acc
    assert acc["ilrg_free"] >= 0.85, acc  # FedAvg without the client's lr: scale fitted
    assert acc["llg"] >= 0.6, acc
    assert min(acc.values()) >= 0.5, acc


def test_fedavg_sign_matters():
    """Fed the raw model delta (not the gradient direction), iLRG gets the labels wrong."""
    model = _model("mlp", 0)
    x, y = _batch(0)
    setup = ClientSetup.from_config(ClientConfig(protocol="fedavg", lr=0.1), K)
    update = client_update(model, x, y, setup, seed=0)
    right = infer_labels("ilrg", model, update.gradient_direction(), K, lr=0.1)
    wrong = infer_labels("ilrg", model, update.tensors, K, lr=0.1)
    assert label_accuracy(right, y) > label_accuracy(wrong, y)


def test_llg_subtracts_the_impact_from_the_chosen_class():
    # s = [-4, -2, 3, 3], C = 4, K = 3: m = -6 * (1 + 1/4) / 3 = -2.5. Classes 0 and 1 once
    # (s -> [-1.5, 0.5, 3, 3]), then argmin picks class 0 again.
    weight = torch.tensor([[-4.0], [-2.0], [3.0], [3.0]])
    assert llg_labels(LabelContext(weight=weight, bias=None, count=3)) == [0, 0, 1]
    # K = 4: m = -1.875, s -> [-2.125, -0.125, 3, 3]; class 0 twice more (-0.25 < -0.125).
    assert llg_labels(LabelContext(weight=weight, bias=None, count=4)) == [0, 0, 0, 1]
    # K = 5: m = -1.5, s -> [-2.5, -0.5, 3, 3] -> 0 (s0 = -1) -> 0 (s0 = 0.5) -> 1.
    assert llg_labels(LabelContext(weight=weight, bias=None, count=5)) == [0, 0, 0, 1, 1]


def test_counts_round_by_largest_remainder():
    assert counts_to_labels(torch.tensor([2.6, 0.7, -0.5, 4.9]), 8) == [0, 0, 1, 3, 3, 3, 3, 3]
    assert counts_to_labels(torch.zeros(3), 2) == [0, 1]


def test_ilrg_refuses_a_last_layer_without_bias():
    model = _model("mlp", 0, bias=False)
    direction = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    with pytest.raises(GradleakError, match="ilrg needs a bias on the last linear layer"):
        infer_labels("ilrg", model, direction, 4)


def test_geng_needs_the_input_shape():
    model = _model("mlp", 0)
    direction = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    with pytest.raises(GradleakError, match="geng needs the model and the input shape"):
        infer_labels("geng", model, direction, 4)


def test_new_rules_are_config_choices():
    for rule in ("llg", "geng", "ilrg"):
        assert load_config(None, [f"attack.labels={rule}"]).attack.labels == rule
