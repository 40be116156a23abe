"""The leak criterion for text: a sentence leaks only if its reconstruction beats what the
attacker gets WITHOUT the update (the images' principle, :mod:`gradleak.metrics.baselines`).

The update-free guess is the best sentence of a reference pool drawn from the data distribution
(other sentences of the data set, never the victim's): per truth sentence, the highest ROUGE-1 F
and the highest MiniLM similarity any pool sentence reaches. It is an oracle-best (the attacker
could not know which pool sentence is closest), so it is a strong baseline: templated data ("My
name is X and ...") makes it high, and then only a reconstruction that also gets the rest right
counts as leaked.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gradleak.errors import GradleakError
from gradleak.metrics.semantic import SEMANTIC_TIE, similarity_matrix

__all__ = ["ROUGE_TYPES", "TextBaselines", "check_id_lists", "check_strings", "passes_text_thresholds",
           "rouge1_matrix", "rouge_scorer", "text_leaked", "update_free_text_baseline"]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@functools.cache
def rouge_scorer(types: tuple[str, ...] = ROUGE_TYPES) -> Any:
    """``rouge_score``'s scorer for ``types``, F-measure without stemming; one per process."""
    from rouge_score import rouge_scorer as rs  # imports nltk: only when text is scored

    return rs.RougeScorer(list(types), use_stemmer=False)


def check_strings(texts: object, name: str) -> list[str]:
    """``texts`` as a list of strings, or a one-line :class:`GradleakError`."""
    if not isinstance(texts, list | tuple) or not all(isinstance(t, str) for t in texts):
        raise GradleakError(f"{name} must be a list of strings, got {type(texts).__name__}")
    return list(texts)


def check_id_lists(ids: object, name: str) -> list[list[int]]:
    """``ids`` as a list of int lists, or a one-line :class:`GradleakError`."""
    ok = isinstance(ids, list | tuple) and all(
        isinstance(row, list | tuple) and all(isinstance(i, int) and not isinstance(i, bool)
                                              for i in row) for row in ids)
    if not ok:
        raise GradleakError(f"{name} must be a list of token-id lists (ints), got "
                            f"{type(ids).__name__}")
    return [list(row) for row in ids]


def rouge1_matrix(truth: list[str], recon: list[str]) -> np.ndarray:
    """ROUGE-1 F of every ``truth[i]`` with every ``recon[j]``: float64 ``[len(truth),
    len(recon)]``."""
    truth, recon = check_strings(truth, "truth"), check_strings(recon, "recon")
    scorer = rouge_scorer(("rouge1",))
    out = np.zeros((len(truth), len(recon)), dtype=np.float64)
    for i, t in enumerate(truth):
        for j, r in enumerate(recon):
            out[i, j] = scorer.score(t, r)["rouge1"].fmeasure
    return out


@dataclass
class TextBaselines:
    """Per truth sentence, the best update-free guess from the reference pool: ``rouge1`` [T]
    (None without a pool), ``semantic`` [T] (None without a pool or MiniLM), ``nearest`` [T]
    (index of the pool sentence with the best ROUGE-1), ``pool`` its size M (0: none)."""

    rouge1: list[float] | None
    semantic: list[float] | None
    nearest: list[int] | None
    pool: int

    def to_dict(self) -> dict[str, object]:
        return {"pool": self.pool, "rouge1": self.rouge1, "semantic": self.semantic,
                "nearest": self.nearest}


def update_free_text_baseline(truth: list[str], reference: list[str] | None, *,
                              semantic: bool = True,
                              table: dict[str, torch.Tensor] | None = None) -> TextBaselines:
    """Best ROUGE-1 F and best MiniLM similarity of each truth sentence over the ``reference``
    pool (``semantic=False`` skips the embedding; ``table``: embeddings from
    :func:`~gradleak.metrics.semantic.embed_table` holding truth and reference)."""
    truth = check_strings(truth, "truth")
    if reference is None or not len(reference):
        return TextBaselines(rouge1=None, semantic=None, nearest=None, pool=0)
    reference = check_strings(reference, "reference_texts")
    scores = rouge1_matrix(truth, reference)  # [T, M]
    sim = similarity_matrix(truth, reference, table=table) if semantic else None
    return TextBaselines(
        rouge1=[float(v) for v in scores.max(axis=1)],
        semantic=None if sim is None else [float(v) for v in sim.max(dim=1).values.tolist()],
        nearest=[int(v) for v in scores.argmax(axis=1)],
        pool=len(reference),
    )


def _check_threshold(value: object, name: str, low: float) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= 1.0
    if not ok:
        raise GradleakError(f"{name} must be a number in [{low:g}, 1], got {value!r}")
    return float(value)


def passes_text_thresholds(rouge1: list[float], semantic: list[float] | None, *,
                           rouge_threshold: float, semantic_threshold: float) -> list[bool]:
    """Per sentence, ``ROUGE-1 >= rouge_threshold`` and (when ``semantic`` is given)
    ``semantic >= semantic_threshold``: recovered by similarity alone, no baseline."""
    rt = _check_threshold(rouge_threshold, "rouge_threshold", 0.0)
    st = _check_threshold(semantic_threshold, "semantic_threshold", -1.0)
    sem = semantic if semantic is not None else [None] * len(rouge1)
    return [r >= rt and (s is None or s >= st) for r, s in zip(rouge1, sem, strict=True)]


def text_leaked(rouge1: list[float], semantic: list[float] | None, baseline: TextBaselines, *,
                rouge_threshold: float, semantic_threshold: float) -> list[bool] | None:
    """Per sentence (its matched reconstruction's scores), the leak flag: it passes the
    thresholds (:func:`passes_text_thresholds`) and strictly beats the baseline, ``ROUGE-1 >
    baseline.rouge1`` and, when both are known, ``semantic > baseline.semantic + SEMANTIC_TIE``
    (ROUGE is exact; float similarities of equal texts differ in the last bits). None without a
    reference pool (nothing to compare with)."""
    flags = passes_text_thresholds(rouge1, semantic, rouge_threshold=rouge_threshold,
                                   semantic_threshold=semantic_threshold)
    if baseline.rouge1 is None:
        return None
    if len(baseline.rouge1) != len(rouge1):
        raise GradleakError(f"baseline has {len(baseline.rouge1)} sentences, scores {len(rouge1)}")
    out = [f and r > b for f, r, b in zip(flags, rouge1, baseline.rouge1, strict=True)]
    if semantic is not None and baseline.semantic is not None:
        out = [f and s > b + SEMANTIC_TIE
               for f, s, b in zip(out, semantic, baseline.semantic, strict=True)]
    return out
