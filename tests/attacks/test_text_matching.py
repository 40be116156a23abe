"""TAG and LAMP (GIA-O on input embeddings): recovery of a short sentence through the one
Scenario, what they read off the update (length, fixed tokens), LAMP's moves and prior."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from gradleak.attacks import build_attack  # noqa: E402
from gradleak.attacks.lamp import MOVES, reorder  # noqa: E402
from gradleak.attacks.lm_prior import LanguagePrior, prior_overlap  # noqa: E402
from gradleak.attacks.losses import distance_for, l1l2_distance  # noqa: E402
from gradleak.config import DataConfig, ModelConfig, load_config  # noqa: E402
from gradleak.errors import GradleakError  # noqa: E402
from gradleak.models.hf import build_text_model  # noqa: E402
from gradleak.scenario import Scenario  # noqa: E402
from gradleak.threat import Knowledge  # noqa: E402

GPT2 = ["model.name=gpt2-tiny", "model.hidden_size=64", "model.layers=2", "model.heads=2"]
SHORT = ["data.dataset=personal", "data.max_length=8"]  # 7 tokens + the client's EOS


def run(*extra: str):
    return Scenario.from_config(load_config(None, [*SHORT, *GPT2, *extra])).run()


def real(x: torch.Tensor) -> list[list[int]]:
    return [row[0][row[1].bool()].tolist() for row in x]


@pytest.fixture(scope="module")
def tag_run():
    # budget: 2 restarts x 400 steps at TAG's published settings (lr scaled to the model)
    return run("attack.name=tag", "attack.iterations=400", "attack.restarts=2", "seed=1")


def test_tag_recovers_a_short_gpt2_sentence(tag_run):
    assert tag_run.result["metrics"]["rouge1"] >= 0.9
    details = tag_run.result["attack_details"]
    assert details["length_rule"] == "position-gradient"
    assert details["length"] == len(real(tag_run.truth)[0])  # read off the update, exactly


def test_the_reconstruction_is_a_text_batch_ending_with_the_protocols_eos(tag_run):
    recon = tag_run.reconstruction.images
    assert recon.dtype == torch.long and recon.shape == tag_run.truth.shape
    eos = build_text_model(ModelConfig(name="gpt2-tiny", hidden_size=64, heads=2),
                           num_classes=2, seed=0).tokenizer.eos_id
    assert real(recon)[0][-1] == eos
    assert recon.shape[0] == 1 and tag_run.reconstruction.candidates.shape[0] == 2  # restarts


def test_lamp_without_prior_recovers_the_sentence_and_says_so():
    # budget: 400 steps at lr 0.05 (x the model's scale), the best of 20 starts, 40 reorderings
    # per discrete step
    out = run("attack.name=lamp", "attack.iterations=400", "attack.lr=0.05",
              "attack.init_candidates=20", "attack.swap_candidates=40", "seed=1")
    assert out.result["metrics"]["rouge1"] >= 0.9
    details = out.result["attack_details"]
    assert details["discrete_steps"] == len([i for i in range(400) if i >= 40 and i % 75 == 1])
    assert any("no language-model prior" in w for w in details["warnings"])


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory):
    from gradleak.models.train_lm import LMTraining, train_lm

    out = tmp_path_factory.mktemp("prior")
    train_lm(DataConfig(dataset="wordnet-examples"), out,
             LMTraining(steps=200, batch_size=16, max_length=24, hidden_size=64, layers=1,
                        heads=2), progress=False)
    return out


def test_lamp_with_a_prior_needs_level_2_and_recovers_the_sentence(prior_dir):
    # budget: 300 steps at lr 0.05, the best of 10 starts, 20 reorderings per discrete step
    lamp = ["attack.name=lamp", f"attack.lm_prior={prior_dir}", "attack.iterations=300",
            "attack.lr=0.05", "attack.init_candidates=10", "attack.swap_candidates=20", "seed=1"]
    with pytest.raises(GradleakError, match="data distribution|level 2|knows_data_distribution"):
        run(*lamp)
    out = run(*lamp, "threat.knows_data_distribution=true")
    assert out.result["metrics"]["rouge1"] >= 0.9
    assert not any("no language-model prior" in w for w in out.result["attack_details"]["warnings"])


def test_the_prior_scores_held_out_sentences_above_their_word_shuffles(prior_dir):
    import random

    from gradleak.data import build_dataset

    texts = list(build_dataset(DataConfig(dataset="wordnet-examples", split="test")).texts)[:40]
    rng = random.Random(0)
    shuffled = [" ".join(rng.sample(t.split(), len(t.split()))) for t in texts]
    prior = LanguagePrior(str(prior_dir))
    fluent = sum(prior.nll([t]) for t in texts) / len(texts)
    assert fluent < sum(prior.nll([t]) for t in shuffled) / len(texts)


def test_a_prior_trained_on_the_victims_split_is_flagged(prior_dir):
    cfg = load_config(None, ["data.dataset=wordnet-examples", "attack.name=lamp",
                             f"attack.lm_prior={prior_dir}"])
    assert prior_overlap(cfg) and "optimistic" in prior_overlap(cfg)[0]
    other = load_config(None, ["data.dataset=wordnet-examples", "data.split=test",
                               "attack.name=lamp", f"attack.lm_prior={prior_dir}"])
    assert prior_overlap(other) == []


def test_needs_follow_the_prior():
    cfg = load_config(None, ["attack.name=lamp"]).attack
    assert Knowledge.DATA_DISTRIBUTION not in build_attack(cfg).needs()
    cfg = load_config(None, ["attack.name=lamp", "attack.lm_prior=/some/dir"]).attack
    assert Knowledge.DATA_DISTRIBUTION in build_attack(cfg).needs()


def test_length_of_a_classifier_batch_is_the_longest_sentence():
    sc = Scenario.from_config(load_config(None, [
        *SHORT, *GPT2, "data.max_length=12", "model.task=classification", "data.num_samples=2",
        "attack.name=tag", "attack.iterations=2", "seed=0"]))
    out = sc.run()
    lengths = [len(r) for r in real(out.truth)]
    assert out.result["attack_details"]["length"] == max(lengths)
    assert any("longest sentence" in w for w in out.result["attack_details"]["warnings"])


def test_a_noised_update_falls_back_to_the_full_length_with_a_warning():
    out = run("attack.name=tag", "attack.iterations=2", "defense.name=gaussian",
              "defense.noise_multiplier=0.01", "seed=0")
    details = out.result["attack_details"]
    assert details["length_rule"] == "full" and details["length"] == 8
    assert any("not one block" in w for w in details["warnings"])


def test_bag_vocabulary_reads_only_tokens_of_the_batch():
    out = run("attack.name=tag", "attack.iterations=5", "attack.vocabulary=bag", "seed=2")
    truth = set(real(out.truth)[0])
    assert set(real(out.reconstruction.images)[0]) <= truth


def test_image_settings_are_refused_in_one_line():
    with pytest.raises(GradleakError, match="image settings"):
        run("attack.name=tag", "attack.iterations=2", "attack.init=gray")


@pytest.mark.parametrize("kind", MOVES)
def test_each_move_permutes_only_the_free_window(kind):
    rng = torch.Generator().manual_seed(0)
    changed = False
    for _ in range(50):
        order = reorder(kind, 1, 7, 10, rng)
        assert sorted(order.tolist()) == list(range(10))
        assert order[0] == 0 and order[7:].tolist() == [7, 8, 9]
        changed |= order.tolist() != list(range(10))
    assert changed


def test_a_window_too_short_is_left_alone():
    rng = torch.Generator().manual_seed(0)
    assert reorder("move-span", 2, 4, 6, rng).tolist() == list(range(6))


def test_l1l2_distance_is_squared_l2_plus_weighted_l1():
    a, b = [torch.tensor([1.0, -2.0]), torch.tensor([[0.5]])], [torch.zeros(2), torch.ones(1, 1)]
    assert float(l1l2_distance(a, b, l1=0.1)) == pytest.approx((1 + 4 + 0.25) + 0.1 * (1 + 2 + 0.5))
    settings = load_config(None, ["attack.name=tag", "attack.l1_weight=0"]).attack
    assert float(distance_for(settings)(a, b)) == pytest.approx(5.25)


@pytest.mark.parametrize("defense", [["defense.name=topk", "defense.sparsity=0.9"],
                                     ["defense.name=clip_norm", "defense.clip_norm=0.01"]])
def test_the_adaptive_mode_transforms_exactly_the_matched_tensors(defense):
    # Regression: the surrogate once covered the word embedding too (27 dummy vs 28 observed).
    sc = Scenario.from_config(load_config(None, [*SHORT, *GPT2, "attack.name=tag",
                                                 "attack.iterations=3", "attack.adaptive=true",
                                                 *defense]))
    obs = sc.observe(sc.defend(sc.client_round().update))
    sc.attack.adapt(sc.cfg.defense, obs.update, obs.model)
    setup = sc.attack.matching_setup(obs)
    dummy = [torch.ones_like(p) for p in setup.params]
    assert len(sc.attack.transform(dummy)) == len(setup.params)
    assert sc.reconstruct(obs).images.shape == sc.images.shape
