"""Partial updates: LoRA adapters (peft) and frozen parameters change what the client shares,
and the text attacks say what they can still read."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")

from gradleak.config import load_config  # noqa: E402
from gradleak.errors import GradleakError  # noqa: E402
from gradleak.scenario import Scenario  # noqa: E402

TEXT = ["data.dataset=personal", "data.max_length=8", "model.name=gpt2-tiny",
        "model.hidden_size=64", "model.heads=2", "seed=1"]


def run(*extra: str):
    return Scenario.from_config(load_config(None, [*TEXT, *extra])).run()


@pytest.fixture(scope="module")
def lora_token_set():
    return run("model.lora_rank=4", "attack.name=token-set")


def test_a_lora_client_shares_only_adapter_tensors(lora_token_set):
    names = list(lora_token_set.update.tensors)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert len(names) == 2 * 2  # A and B of c_attn in each of the 2 blocks


def test_peft_starts_b_at_zero_so_the_first_rounds_a_gradient_is_zero(lora_token_set):
    t = lora_token_set.update.tensors
    assert all(float(v.abs().max()) == 0.0 for n, v in t.items() if ".lora_A." in n)
    assert any(float(v.abs().max()) > 0.0 for n, v in t.items() if ".lora_B." in n)


def test_token_set_reads_no_bag_through_a_lora_rank_below_the_tokens(lora_token_set):
    details = lora_token_set.result["attack_details"]
    assert details["rule"] == "span" and not details["feasible"] and details["found"] == 0
    assert "infeasible" in details["reason"]
    assert any("no embedding-row leak" in w for w in details["warnings"])


def test_token_set_reads_nothing_without_embedding_or_layer0_attention():
    out = run("model.lora_rank=4", "model.lora_targets=[c_fc]", "attack.name=token-set")
    details = out.result["attack_details"]
    assert details["rule"] == "none" and details["found"] == 0
    assert "not readable" in details["reason"]


def test_frozen_embeddings_remove_the_row_leak_but_not_the_span_leak():
    out = run("model.frozen=[embeddings]", "attack.name=token-set")
    assert not any("wte" in n for n in out.update.tensors)
    details = out.result["attack_details"]
    assert details["rule"] == "span"
    assert any("no embedding-row leak" in w for w in details["warnings"])
    assert out.result["metrics"]["token_recall"] == 1.0  # layer 0's attention still gives them


def test_dager_reads_a_sentence_through_lora_adapters_of_rank_above_its_tokens():
    out = run("model.lora_rank=16", "attack.name=dager")
    assert torch.equal(out.matched, out.truth)  # exact, from dL/dB = dY (A X)^T alone
    details = out.result["attack_details"]
    assert details["lora"] == {"layers": [0, 1], "ranks": [16, 16]} and details["feasible"]


def test_dager_through_a_lora_rank_below_the_tokens_is_infeasible_and_says_so():
    details = run("model.lora_rank=4", "attack.name=dager").result["attack_details"]
    assert not details["feasible"]
    assert any("LoRA update" in w for w in details["warnings"])


def test_dager_without_the_attention_gradient_is_refused_in_one_line():
    with pytest.raises(GradleakError, match="LoRA"):
        run("model.lora_rank=4", "model.lora_targets=[c_fc]", "attack.name=dager")


def test_frozen_image_layers_leave_the_update():
    out = Scenario.from_config(load_config(None, [
        "model.name=mlp", "model.hidden=[16]", "data.resolution=8", "data.num_samples=1",
        "model.frozen=[net.1]", "attack.name=ig", "attack.iterations=2"])).run()
    assert out.update.tensors and not any(n.startswith("net.1.") for n in out.update.tensors)


@pytest.mark.parametrize("extra, fragment", [
    (["model.frozen=[nothing.here]"], "matches no parameter"),
    (["model.lora_rank=4", "model.lora_targets=[q_proj]"], "no module named 'q_proj'"),
    (["model.lora_targets=[c_attn]"], "needs model.lora_rank"),
])
def test_bad_partial_settings_are_one_line(extra, fragment):
    with pytest.raises(GradleakError, match=fragment):
        run(*extra, "attack.name=token-set")


def test_lora_on_an_image_model_is_refused():
    with pytest.raises(GradleakError, match="text models"):
        Scenario.from_config(load_config(None, ["model.name=mlp", "data.resolution=8",
                                                "model.lora_rank=4"]))


def test_the_adapter_init_follows_the_model_seed():
    pick = [*TEXT, "model.lora_rank=4", "attack.name=token-set"]
    a = Scenario.from_config(load_config(None, pick)).model
    b = Scenario.from_config(load_config(None, pick)).model
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
