"""Text reconstruction metrics: ROUGE, token accuracy, exact and critical-string recovery,
token-set precision / recall, and the sentence matching of LAMP (Balunovic et al. 2022).

Inputs are decoded strings (``recon``, ``truth``: one string per sentence) and token-id lists
(one list per sentence, special tokens removed, as ``TextTokenizer.token_ids`` gives them). Each
per-pair function returns one value per truth sentence. :func:`score_text` matches
reconstructions to truths and combines the metrics with the leak criterion of
:mod:`gradleak.metrics.text_baselines` (beat the best update-free guess from the data).

ROUGE-1/2/L are ``rouge_score``'s F-measures (``use_stemmer=False``): its tokenizer lowercases
and keeps ``[a-z0-9]+`` words only, so punctuation and case never count, and a text with no such
word (e.g. only CJK characters) scores 0 against anything. ROUGE-1 = 1 means every word is back
(in any order); ROUGE-L rewards the order too.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any

from scipy.optimize import linear_sum_assignment

from gradleak.config import DEFAULT_ROUGE_THRESHOLD, DEFAULT_SEMANTIC_THRESHOLD
from gradleak.errors import GradleakError
from gradleak.metrics.image import MetricInfo
from gradleak.metrics.semantic import embed_table, semantic_similarity, semantic_warning
from gradleak.metrics.text_baselines import (
    ROUGE_TYPES,
    TextBaselines,
    check_id_lists,
    check_strings,
    passes_text_thresholds,
    rouge1_matrix,
    rouge_scorer,
    text_leaked,
    update_free_text_baseline,
)
from gradleak.metrics.text_critical import critical_recall, critical_recall_bag, occurs

__all__ = [
    "DEFAULT_ROUGE_THRESHOLD",
    "DEFAULT_SEMANTIC_THRESHOLD",
    "ROUGE_TYPES",
    "TEXT_METRICS",
    "critical_recall",
    "critical_recall_bag",
    "exact_recovery",
    "match_sentences",
    "normalise",
    "occurs",
    "rouge",
    "rouge1_matrix",
    "score_text",
    "token_accuracy",
    "token_set_scores",
]

TEXT_METRICS: dict[str, MetricInfo] = {
    "rouge1": MetricInfo("rouge1", higher_is_better=True, range=(0.0, 1.0),
                         threshold=DEFAULT_ROUGE_THRESHOLD,
                         threshold_key="metrics.rouge_threshold"),
    "rouge2": MetricInfo("rouge2", higher_is_better=True, range=(0.0, 1.0)),
    "rougeL": MetricInfo("rougeL", higher_is_better=True, range=(0.0, 1.0)),
    "token_accuracy": MetricInfo("token_accuracy", higher_is_better=True, range=(0.0, 1.0)),
    "exact": MetricInfo("exact", higher_is_better=True, range=(0.0, 1.0)),
    "semantic": MetricInfo("semantic", higher_is_better=True, range=(-1.0, 1.0),
                           threshold=DEFAULT_SEMANTIC_THRESHOLD,
                           threshold_key="metrics.semantic_threshold"),
    "critical_recall": MetricInfo("critical_recall", higher_is_better=True, range=(0.0, 1.0)),
    "token_precision": MetricInfo("token_precision", higher_is_better=True, range=(0.0, 1.0)),
    "token_recall": MetricInfo("token_recall", higher_is_better=True, range=(0.0, 1.0)),
    "leak_rate": MetricInfo("leak_rate", higher_is_better=True, range=(0.0, 1.0)),
}
"""What each text metric means (``higher_is_better``: from the attack's side, as
:data:`gradleak.metrics.METRICS`). A sentence counts as *recovered* when ROUGE-1 F >=
``DEFAULT_ROUGE_THRESHOLD`` (0.9) and, with the MiniLM embedding installed, semantic similarity >=
``DEFAULT_SEMANTIC_THRESHOLD`` (0.9).

Why 0.9: ROUGE-1 F = 1 means all words are back; 0.9 allows one wrong word in ten (the 11-word
"My name is Carol and the cat is on the mat." against "... Alice ..." scores 10/11 = 0.91). That
is the SoK paper's Sec. 7 concern: a sentence can be "recovered" by similarity while the one word
that is private is wrong, so :func:`critical_recall` reports the private strings separately and
the semantic score catches one-word changes of content (MiniLM gives "The dog is on the mat." vs
"The cat is on the mat." 0.67 at ROUGE-1 0.83). MiniLM is known to be blind to negation ("... is
not on the mat." scores 0.94): no similarity metric replaces reading the reconstructions.
"""


def _pairs(recon: object, truth: object) -> tuple[list[str], list[str]]:
    recon, truth = check_strings(recon, "recon"), check_strings(truth, "truth")
    if len(recon) != len(truth):
        raise GradleakError(f"recon and truth must pair up, got {len(recon)} and {len(truth)}")
    return recon, truth


def normalise(text: str) -> str:
    """Whitespace runs as one space, no leading / trailing space."""
    return " ".join(text.split())


def rouge(recon: list[str], truth: list[str]) -> dict[str, list[float]]:
    """ROUGE-1/2/L F-measure of each pair ``(recon[i], truth[i])``: ``{type: [n]}``."""
    recon, truth = _pairs(recon, truth)
    scorer = rouge_scorer()
    out: dict[str, list[float]] = {t: [] for t in ROUGE_TYPES}
    for r, t in zip(recon, truth, strict=True):
        scores = scorer.score(t, r)
        for name in ROUGE_TYPES:
            out[name].append(float(scores[name].fmeasure))
    return out


def match_sentences(recon: list[str], truth: list[str]) -> list[int | None]:
    """For each truth sentence, the index of its reconstruction, or None: the optimal one-to-one
    assignment on cost ``1 - ROUGE-1 F`` (LAMP's rule; ``scipy.optimize.linear_sum_assignment``).
    With fewer reconstructions than truths, ``len(truth) - len(recon)`` truths stay unmatched
    (None); with more, the extra reconstructions are left out."""
    recon, truth = check_strings(recon, "recon"), check_strings(truth, "truth")
    out: list[int | None] = [None] * len(truth)
    if not recon or not truth:
        return out
    rows, cols = linear_sum_assignment(1.0 - rouge1_matrix(truth, recon))
    for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
        out[i] = int(j)
    return out


def token_accuracy(recon_ids: list[list[int]], truth_ids: list[list[int]], *,
                   special_ids: Collection[int] = ()) -> list[float | None]:
    """Per pair, the share of the truth's token positions whose reconstructed id is the truth's
    (position j against position j, after dropping ``special_ids`` from both; a shorter
    reconstruction misses the rest). None for a truth with no real token."""
    recon_ids, truth_ids = check_id_lists(recon_ids, "recon_ids"), check_id_lists(truth_ids, "truth_ids")
    if len(recon_ids) != len(truth_ids):
        raise GradleakError(f"recon_ids and truth_ids must pair up, got {len(recon_ids)} and "
                            f"{len(truth_ids)}")
    drop = set(special_ids)
    out: list[float | None] = []
    for r, t in zip(recon_ids, truth_ids, strict=True):
        r, t = [i for i in r if i not in drop], [i for i in t if i not in drop]
        out.append(sum(a == b for a, b in zip(r, t, strict=False)) / len(t) if t else None)
    return out


def exact_recovery(recon: list[str], truth: list[str]) -> list[bool]:
    """Per pair, whether the texts are equal after :func:`normalise` (case counts)."""
    recon, truth = _pairs(recon, truth)
    return [normalise(r) == normalise(t) for r, t in zip(recon, truth, strict=True)]


def token_set_scores(recon_ids: list[list[int]], truth_ids: list[list[int]], *,
                     special_ids: Collection[int] = ()) -> tuple[float | None, float | None]:
    """``(precision, recall)`` of the distinct token ids of all reconstructions ``R`` against
    those of all truth sentences ``T`` (``special_ids`` dropped): ``|R & T| / |R|`` and
    ``|R & T| / |T|``; each None when its denominator is empty."""
    drop = set(special_ids)
    rec = {i for row in check_id_lists(recon_ids, "recon_ids") for i in row} - drop
    tru = {i for row in check_id_lists(truth_ids, "truth_ids") for i in row} - drop
    hit = len(rec & tru)
    return (hit / len(rec) if rec else None, hit / len(tru) if tru else None)


def _mean(values: Sequence[float | bool | None] | None) -> float | None:
    known = [float(v) for v in values or () if v is not None]
    return sum(known) / len(known) if known else None


def _check_critical(critical: object, truth: list[str], notes: list[str]) -> list[list[str]] | None:
    """``critical`` checked (one list of strings per truth sentence); strings that do not occur
    in their truth (cut off at max_length?) are dropped with a note: they were never sent."""
    if critical is None:
        notes.append("critical_recall is null: no private strings (critical) given")
        return None
    if not isinstance(critical, list | tuple) or len(critical) != len(truth):
        raise GradleakError(f"critical must hold one list of strings per truth sentence "
                            f"({len(truth)}), got {type(critical).__name__}")
    kept = [[c for c in check_strings(row, "critical[i]") if occurs(c, t)]
            for row, t in zip(critical, truth, strict=True)]
    dropped = sum(len(row) for row in critical) - sum(len(row) for row in kept)
    if dropped:
        notes.append(f"{dropped} private string(s) do not occur in their truth sentence (as the "
                     f"model saw it, e.g. cut at max_length) and are not scored")
    return kept


def _sentence_scores(recon: list[str], truth: list[str], matching: list[int | None],
                     rids: list[list[int]] | None, tids: list[list[int]] | None,
                     critical: list[list[str]] | None, special_ids: Collection[int],
                     table: dict[str, Any] | None) -> dict[str, list[Any] | None]:
    """Per truth sentence, the metrics of its matched reconstruction (0 when unmatched)."""
    hit = [j is not None for j in matching]
    matched = [recon[j] if j is not None else "" for j in matching]
    scores: dict[str, list[Any] | None] = dict(rouge(matched, truth))
    for name in ROUGE_TYPES:
        scores[name] = [v if h else 0.0 for v, h in zip(scores[name], hit, strict=True)]
    sem = None if table is None else semantic_similarity(matched, truth, table=table)
    scores["semantic"] = None if sem is None else [
        v if h else 0.0 for v, h in zip(sem, hit, strict=True)]
    scores["token_accuracy"] = None
    if rids is not None and tids is not None:
        scores["token_accuracy"] = token_accuracy(
            [rids[j] if j is not None else [] for j in matching], tids, special_ids=special_ids)
    scores["exact"] = [e and h for e, h in zip(exact_recovery(matched, truth), hit, strict=True)]
    scores["critical_recall"] = None if critical is None else critical_recall(matched, critical)
    scores["reconstruction"] = [recon[j] if j is not None else None for j in matching]
    return scores


def _matching_notes(matching: list[int | None], n_recon: int, truth: list[str],
                    notes: list[str]) -> None:
    wordless = sum(re.search(r"[a-z0-9]", t.lower()) is None for t in truth)
    if wordless:  # rouge_score keeps [a-z0-9]+ words only
        notes.append(f"{wordless} truth sentence(s) have no [a-z0-9] word: ROUGE is 0 for them "
                     f"and their matching is arbitrary")
    missing = sum(j is None for j in matching)
    if missing:
        notes.append(f"{missing} of {len(matching)} truth sentences have no reconstruction (the "
                     f"attack returned {n_recon}): they score 0 on every metric and never leak")
    if n_recon > len(matching):
        notes.append(f"{n_recon - len(matching)} reconstruction(s) matched no truth sentence and "
                     f"are not scored (token_precision counts their tokens)")


def _criterion(scores: dict[str, Any], truth: list[str], matching: list[int | None],
               reference: list[str] | None, table: dict[str, Any] | None,
               thresholds: dict[str, float], notes: list[str]) -> TextBaselines:
    """Baselines, ``passes_thresholds`` and ``leaked`` into ``scores`` (an unmatched truth
    sentence neither passes nor leaks, whatever the thresholds)."""
    base = update_free_text_baseline(truth, reference, semantic=table is not None, table=table)
    passes = passes_text_thresholds(scores["rouge1"], scores["semantic"], **thresholds)
    leaked = text_leaked(scores["rouge1"], scores["semantic"], base, **thresholds)
    hit = [j is not None for j in matching]
    scores["passes_thresholds"] = [p and h for p, h in zip(passes, hit, strict=True)]
    scores["leaked"] = None if leaked is None else [
        v and h for v, h in zip(leaked, hit, strict=True)]
    scores["baseline_rouge1"], scores["baseline_semantic"] = base.rouge1, base.semantic
    if scores["leaked"] is None:
        notes.append("leaked and leak_rate are null: no reference pool (reference_texts) for the "
                     "update-free baseline; passes_thresholds has the similarity-only flags")
    elif scores["semantic"] is None:
        notes.append("the leak criterion uses ROUGE-1 only (no semantic similarity)")
    return base


def _embeddings(texts: list[str], notes: list[str]) -> dict[str, Any] | None:
    """One MiniLM table for every score, so equal texts compare equal ("" stands for an
    unmatched truth's reconstruction); None, with the install hint noted, without MiniLM."""
    warning = semantic_warning()
    if warning is not None:
        notes.append(warning)
        return None
    return embed_table(texts)


def score_text(recon_texts: list[str], truth_texts: list[str], *,
               recon_ids: list[list[int]] | None = None,
               truth_ids: list[list[int]] | None = None,
               critical: list[list[str]] | None = None,
               critical_ids: list[list[list[int]]] | None = None,
               reference_texts: list[str] | None = None, bag: bool = False,
               special_ids: Collection[int] = (),
               rouge_threshold: float = DEFAULT_ROUGE_THRESHOLD,
               semantic_threshold: float = DEFAULT_SEMANTIC_THRESHOLD) -> dict[str, Any]:
    """Score a text attack's reconstructions of one batch, ready for ``result.json``.

    ``truth_texts`` [T]: the sentences as the model saw them (decoded from the batch, so the
    tokenizer's truncation and casing apply to both sides); ``recon_texts`` [R] (any R);
    ``*_ids``: token ids per sentence (special tokens dropped, or listed in ``special_ids``);
    ``critical[i]``: sentence i's private strings (substrings of it); ``reference_texts``: a
    pool of other sentences of the data (never the victim's) for the leak criterion.
    Sentences are matched by :func:`match_sentences`. ``bag=True``: the attack recovered a bag
    of tokens (``recon_ids``), not sentences: only token_precision/recall and (from
    ``critical_ids[i][k]``, the ids of private string k) critical_recall are computed.

    Returns ``metrics`` (batch means; a sentence that could not be computed is left out, a
    metric that cannot be computed at all is None), ``per_sample`` (lists in truth order),
    ``matching`` (for each truth, its reconstruction's index or None), ``baselines``,
    ``thresholds``, ``counts`` and ``warnings`` (why anything is None).
    """
    truth = check_strings(truth_texts, "truth_texts")
    recon = check_strings(recon_texts, "recon_texts")
    if not truth:
        raise GradleakError("truth_texts must hold at least one sentence, got none")
    rids = None if recon_ids is None else check_id_lists(recon_ids, "recon_ids")
    tids = None if truth_ids is None else check_id_lists(truth_ids, "truth_ids")
    if tids is not None and len(tids) != len(truth):
        raise GradleakError(f"truth_ids must hold one id list per truth sentence ({len(truth)}), "
                            f"got {len(tids)}")
    if not bag and rids is not None and len(rids) != len(recon):
        raise GradleakError(f"recon_ids must hold one id list per reconstruction ({len(recon)}), "
                            f"got {len(rids)}")
    thresholds = {"rouge_threshold": rouge_threshold, "semantic_threshold": semantic_threshold}
    passes_text_thresholds([], None, **thresholds)  # one-line errors for bad thresholds
    notes: list[str] = []
    precision = recall = None
    if rids is None or tids is None:
        notes.append("token metrics are null: token ids (recon_ids and truth_ids) not given")
    else:
        precision, recall = token_set_scores(rids, tids, special_ids=special_ids)
    if bag:
        scores, matching, base = _bag_scores(truth, rids, critical_ids, notes)
    else:
        critical_ok = _check_critical(critical, truth, notes)
        matching = match_sentences(recon, truth)
        _matching_notes(matching, len(recon), truth, notes)
        pool = check_strings(reference_texts or [], "reference_texts")
        table = _embeddings(truth + recon + pool + [""] * (None in matching), notes)
        scores = _sentence_scores(recon, truth, matching, rids, tids, critical_ok, special_ids,
                                  table)
        base = _criterion(scores, truth, matching, pool, table, thresholds, notes)
        if scores["token_accuracy"] is not None and None in scores["token_accuracy"]:
            notes.append("token_accuracy leaves out truth sentences without a real token")
    if scores.get("critical_recall") and all(v is None for v in scores["critical_recall"]):
        notes.append("critical_recall is null: no sentence has a private string")
    means = {name: _mean(scores.get(name)) for name in
             ("rouge1", "rouge2", "rougeL", "token_accuracy", "exact", "semantic",
              "critical_recall")}
    means |= {"token_precision": precision, "token_recall": recall,
              "leak_rate": None if scores.get("leaked") is None else _mean(scores["leaked"])}
    return {
        "metrics": means,
        "per_sample": {"matched": matching, **scores, "original": truth},
        "matching": matching,
        "baselines": base.to_dict(),
        "thresholds": {"rouge1": float(rouge_threshold), "semantic": float(semantic_threshold)},
        "counts": {"truth": len(truth), "reconstructions": len(recon)},
        "mode": "bag" if bag else "sentences",
        "warnings": notes,
    }


_SENTENCE_METRICS = ("rouge1", "rouge2", "rougeL", "token_accuracy", "exact", "semantic",
                     "passes_thresholds", "leaked", "baseline_rouge1", "baseline_semantic")


def _bag_scores(truth: list[str], rids: list[list[int]] | None,
                critical_ids: object, notes: list[str]
                ) -> tuple[dict[str, Any], list[int | None], TextBaselines]:
    """Bag-of-tokens mode: the sentence metrics are None; critical recall from the bag."""
    notes.append("bag mode: the attack recovered a bag of tokens, not sentences, so rouge1, "
                 "rouge2, rougeL, token_accuracy, exact, semantic and leak_rate are null")
    scores: dict[str, Any] = dict.fromkeys(_SENTENCE_METRICS)
    scores["critical_recall"] = None
    if critical_ids is None or rids is None:
        notes.append("critical_recall is null: bag mode needs the private strings' token ids "
                     "(critical_ids) and the recovered tokens (recon_ids)")
    elif not isinstance(critical_ids, list | tuple) or len(critical_ids) != len(truth):
        raise GradleakError(f"critical_ids must hold one list per truth sentence ({len(truth)}), "
                            f"got {type(critical_ids).__name__}")
    else:
        bag = {i for row in rids for i in row}
        scores["critical_recall"] = critical_recall_bag(bag, critical_ids)
    scores["reconstruction"] = [None] * len(truth)
    return scores, [None] * len(truth), TextBaselines(None, None, None, 0)
