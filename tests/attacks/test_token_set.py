"""Token-set leakage: the bag of tokens of a text batch, read off the update by either rule."""

from __future__ import annotations

import torch

from gradleak.attacks.token_set import nonzero_rows
from gradleak.config import load_config
from gradleak.scenario import Scenario

GPT2 = ["model.name=gpt2-tiny", "model.hidden_size=64", "model.layers=2", "model.heads=2"]


def run(*extra: str):
    return Scenario.from_config(load_config(None, [
        "data.dataset=personal", "data.max_length=16", *GPT2, "attack.name=token-set",
        "data.num_samples=4", *extra])).run()


def bag_of(x: torch.Tensor) -> set[int]:
    return {int(i) for row in x for i in row[0][row[1].bool()]}


def test_tied_embeddings_use_the_span_rule_with_recall_1():
    out = run("seed=0")  # gpt2-tiny's LM head is its input embedding: every row has a gradient
    details = out.result["attack_details"]
    assert details["tied"] and details["rule"] == "span"
    assert bag_of(out.truth) <= bag_of(out.reconstruction.images)
    m = out.result["metrics"]
    assert m["token_recall"] == 1.0 and m["token_precision"] >= 0.9, m


def test_untied_embeddings_use_the_zero_rows_rule_exactly():
    out = run("seed=1", "model.task=classification")  # a classifier: no LM head to tie
    details = out.result["attack_details"]
    assert not details["tied"] and details["rule"] == "zero-rows"
    assert bag_of(out.reconstruction.images) == bag_of(out.truth)  # not one token more or less
    assert out.result["metrics"]["token_recall"] == out.result["metrics"]["token_precision"] == 1.0


def test_a_dense_update_falls_back_to_the_span_rule():
    # Gaussian noise fills every embedding row: the zero-rows test must not fire on it.
    out = run("seed=1", "model.task=classification", "defense.name=gaussian",
              "defense.noise_multiplier=1e-3")
    assert out.result["attack_details"]["rule"] == "span"
    assert "not sparse" in out.result["attack_details"]["reason"]
    if not out.result["attack_details"]["feasible"]:  # the span then accepts every token
        assert out.result["attack_details"]["found"] == 0


def test_nonzero_rows_is_exact():
    g = torch.zeros(10, 3)
    g[[2, 7]] = torch.tensor([[1e-3, 0.0, 0.0], [0.0, 5.0, 1.0]])
    assert nonzero_rows(g).tolist() == [2, 7]
    assert nonzero_rows(torch.zeros(4, 2)).tolist() == []
