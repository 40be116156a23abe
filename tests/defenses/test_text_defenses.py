"""The defenses apply to text updates unchanged: each post-processing changes a text model's
update as it changes an image model's, and DP-SGD trains a text client."""

from __future__ import annotations

import pytest
import torch

from gradleak.config import load_config
from gradleak.scenario import Scenario
from tests.defenses.test_defenses import STRONG

TEXT = ["data.dataset=personal", "data.max_length=12", "model.name=gpt2-tiny",
        "model.hidden_size=32", "model.layers=1", "model.heads=2", "data.num_samples=2",
        "attack.name=token-set"]


def _scenario(*extra: str) -> Scenario:
    return Scenario.from_config(load_config(None, [*TEXT, *extra]))


@pytest.fixture(scope="module")
def plain():
    return _scenario().client_round().update


# A text update's entries are small (|g| < 0.5 everywhere): clip at a bound that bites.
TEXT_STRONG = {**STRONG, "clip": {"bound": 1e-4}}


@pytest.mark.parametrize("name", sorted(set(TEXT_STRONG) - {"none"}))
def test_every_post_processing_changes_a_text_update(name, plain):
    settings = [f"defense.{k}={v}" for k, v in TEXT_STRONG[name].items()]
    sc = _scenario(f"defense.name={name}", *settings)
    update = sc.client_round().update
    assert update.tensors.keys() == plain.tensors.keys()
    assert all(torch.equal(update.tensors[k], plain.tensors[k]) for k in plain.tensors)
    shared = sc.defend(update)
    assert shared.tensors.keys() == update.tensors.keys() and shared.kind == update.kind
    assert any(not torch.equal(shared.tensors[k], update.tensors[k]) for k in update.tensors)


def test_the_no_defense_passes_a_text_update_through(plain):
    shared = _scenario().defend(plain)
    assert all(torch.equal(shared.tensors[k], plain.tensors[k]) for k in plain.tensors)


def test_dpsgd_trains_a_text_client():
    sc = _scenario("defense.name=dpsgd", "defense.dp_noise_multiplier=0.5",
                   "defense.dp_max_grad_norm=1.0")
    rnd = sc.client_round()
    plain = _scenario().client_round().update
    assert rnd.update.tensors.keys() == plain.tensors.keys()
    assert all(torch.isfinite(t).all() for t in rnd.update.tensors.values())
    assert any(not torch.allclose(rnd.update.tensors[k], plain.tensors[k]) for k in plain.tensors)
    out = sc.run()  # and the rest of the pipeline takes the DP update
    assert 0.0 <= out.result["metrics"]["token_recall"] <= 1.0


def test_dpsgd_without_noise_or_clipping_is_the_plain_text_gradient(plain):
    sc = _scenario("defense.name=dpsgd", "defense.dp_noise_multiplier=0",
                   "defense.dp_max_grad_norm=1e6")
    update = sc.client_round().update
    for k, t in plain.tensors.items():  # per-sample gradients, one at a time, sum to the batch's
        assert torch.allclose(update.tensors[k], t, atol=1e-6, rtol=1e-4), k
