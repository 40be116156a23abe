"""DAGER (Petrov et al., NeurIPS 2024): exact recovery under FedSGD, the span test itself, the
encoder variant, the FedAvg variant and the feasibility report, all through the one Scenario."""

from __future__ import annotations

import pytest
import torch

from gradleak.attack_settings import SpanSettings
from gradleak.attacks.dager import observed_spans
from gradleak.attacks.transformer_layers import first_layer_inputs, probe, span_distance
from gradleak.config import load_config
from gradleak.scenario import Scenario

GPT2 = ["model.name=gpt2-tiny", "model.hidden_size=64", "model.layers=2", "model.heads=2"]
PERSONAL = ["data.dataset=personal", "data.max_length=16"]


def scenario(*extra: str) -> Scenario:
    return Scenario.from_config(load_config(None, [*PERSONAL, *GPT2, "attack.name=dager",
                                                   *extra]))


def real_ids(x: torch.Tensor) -> list[list[int]]:
    """The unpadded ids of each sentence of ``x [N, 2, L]``."""
    return [row[0][row[1].bool()].tolist() for row in x]


@pytest.fixture(scope="module")
def b2_run():
    return scenario("data.num_samples=2", "seed=3").run()


def test_dager_recovers_every_token_of_a_b2_gpt2_batch_exactly(b2_run):
    assert sorted(real_ids(b2_run.reconstruction.images)) == sorted(real_ids(b2_run.truth))
    assert torch.equal(b2_run.matched, b2_run.truth)
    m = b2_run.result["metrics"]
    assert m["rouge1"] == m["rouge2"] == m["exact"] == m["token_accuracy"] == 1.0
    assert m["critical_recall"] == 1.0  # the personal data is in the sentences, so it is recovered
    details = b2_run.result["attack_details"]
    assert details["feasible"] and details["rank"] < details["width"] == 64


def test_the_span_test_accepts_the_batch_tokens_and_rejects_all_others():
    sc = scenario("data.num_samples=2", "seed=5")
    obs = sc.observe(sc.defend(sc.client_round().update))
    arch, length = probe(obs.model), sc.images.shape[-1]
    spans, _, _ = observed_spans(obs, arch, SpanSettings(), [0], length)
    vocab = torch.arange(obs.model.tokenizer.vocab_size)
    eos = obs.model.tokenizer.eos_id
    inside = {i for row in real_ids(sc.images) for i in row} - {eos}  # EOS has zero gradient
    for p in range(4):  # position by position, as the layer-0 filter runs
        dist = span_distance(spans[0], first_layer_inputs(obs.model, vocab, p))
        here = {row[p] for row in real_ids(sc.images) if len(row) > p} - {eos}
        assert all(dist[i] < 1e-4 for i in here), "a batch token is outside the span"
        foreign = torch.tensor(sorted(set(range(len(vocab))) - inside))
        assert float(dist[foreign].min()) > 1e-2, "a token not in the batch passed the span test"


def test_dager_on_the_pretrained_minilm_encoder():
    out = Scenario.from_config(load_config(None, [
        "data.dataset=wordnet", "data.max_length=12", "model.name=minilm", "attack.name=dager",
        "data.num_samples=2", "seed=1"])).run()
    m = out.result["metrics"]
    assert m["rouge1"] >= 0.99 and m["exact"] == 1.0, m
    details = out.result["attack_details"]
    assert details["family"] == "bert" and details["input_dimension"] == details["width"] == 384


def test_dager_inverts_a_one_step_fedavg_delta():
    # One local step of plain SGD: the delta is -lr x the gradient, up to float32 rounding.
    out = scenario("data.num_samples=2", "seed=2", "client.protocol=fedavg",
                   "client.local_epochs=1", "client.lr=0.01").run()
    assert out.result["attack_details"]["kind"] == "model_delta"
    assert out.result["metrics"]["rouge1"] == 1.0


def test_dager_says_when_the_tokens_fill_the_width():
    # 8 sentences x 16 positions > width 16: the span is the whole space, nothing is evidence.
    out = Scenario.from_config(load_config(None, [
        *PERSONAL, "model.name=gpt2-tiny", "model.hidden_size=16", "model.layers=2",
        "model.heads=2", "attack.name=dager", "data.num_samples=8"])).run()
    details = out.result["attack_details"]
    # A fresh GPT-2's LayerNorm (bias 0) puts every input in a d - 1 = 15-dimensional subspace.
    assert details["width"] == 16 and details["input_dimension"] == 15
    assert details["feasible"] is False and details["rank"] == 15
    assert any("whole width" in w for w in details["warnings"])


def test_encoder_selection_drops_variants_of_a_closer_sentence():
    from gradleak.attacks.dager import _distinct

    scored = [([101, 5, 6, 7, 8, 102], 1e-4),   # the sentence
              ([101, 5, 6, 9, 8, 102], 2e-4),   # one token swapped in: a variant, dropped
              ([101, 1, 2, 3, 4, 102], 3e-4),   # another sentence of the same length
              ([101, 5, 6, 102], 4e-4)]         # another length: never compared
    assert [s for s, _ in _distinct(scored)] == [scored[0][0], scored[2][0], scored[3][0]]


def test_a_one_layer_model_is_refused_before_the_client_trains():
    from gradleak.errors import GradleakError

    with pytest.raises(GradleakError, match="second attention layer"):
        Scenario.from_config(load_config(None, [*PERSONAL, "model.name=gpt2-tiny",
                                                "model.hidden_size=32", "model.layers=1",
                                                "model.heads=2", "attack.name=dager"]))


def test_fedavg_minibatches_are_recovered_by_replaying_the_first_epoch():
    # B = 4 sentences in two mini-batches of 2: the second is seen one SGD step after W0.
    run = [*PERSONAL, "model.name=gpt2-tiny", "attack.name=dager", "data.num_samples=4", "seed=0",
           "client.protocol=fedavg", "client.local_epochs=1", "client.batch_size=2",
           "client.lr=0.01"]
    known = Scenario.from_config(load_config(None, [*run, "threat.knows_client_config=true"])).run()
    assert known.result["attack_details"]["replayed_steps"] == 1
    assert known.result["metrics"]["rouge1"] == 1.0
    blind = Scenario.from_config(load_config(None, run)).run()  # level 0: no replay possible
    assert "replayed_steps" not in blind.result["attack_details"]
    assert blind.result["metrics"]["exact"] < 1.0
