"""Critical-string recall: were the sentence's private strings (names, numbers, e-mail
addresses) recovered? The SoK paper's Sec. 7 concern: similarity scores can call a sentence
recovered while the one private word in it is wrong ("My name is Carol ..." for "... Alice ...":
ROUGE-1 0.91), so the private strings are scored on their own.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Sequence

from gradleak.errors import GradleakError
from gradleak.metrics.text_baselines import check_id_lists, check_strings

__all__ = ["critical_recall", "critical_recall_bag", "occurs"]

_PIECE = re.compile(r"\w+|[^\w\s]")


def _pieces(text: str) -> list[str]:
    """``text`` as casefolded, accent-free words and single punctuation marks."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text.casefold())
                    if not unicodedata.combining(c))
    return _PIECE.findall(plain)


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(haystack[k:k + n] == needle for k in range(len(haystack) - n + 1))


def occurs(private: str, text: str) -> bool:
    """Whether the private string occurs in ``text`` (the rule of :func:`critical_recall`)."""
    return _contains(_pieces(text), _pieces(private))


def critical_recall(recon: list[str], critical: Sequence[Sequence[str]]) -> list[float | None]:
    """Per sentence, the share of its private strings (``critical[i]``) that the reconstruction
    ``recon[i]`` contains; None when the sentence has none.

    A private string is recovered when its words and punctuation marks occur, contiguously and
    in order, among the reconstruction's: both are compared casefolded and without accents, so
    an uncased tokenizer's ``"alice"`` recovers ``"Alice"`` and ``"bob @ example. com"`` (BERT's
    decoding) recovers ``"bob@example.com"``, while ``"Ann"`` is not found in ``"Annual"``.
    """
    recon = check_strings(recon, "recon")
    if not isinstance(critical, list | tuple) or len(critical) != len(recon):
        got = len(critical) if isinstance(critical, list | tuple) else type(critical).__name__
        raise GradleakError(f"critical must hold one list of strings per sentence "
                            f"({len(recon)}), got {got}")
    out: list[float | None] = []
    for r, strings in zip(recon, critical, strict=True):
        strings = check_strings(strings, "critical[i]")
        pieces = _pieces(r)
        out.append(sum(_contains(pieces, _pieces(s)) for s in strings) / len(strings)
                   if strings else None)
    return out


def critical_recall_bag(bag: Collection[int], critical_ids: Sequence[Sequence[Sequence[int]]]
                        ) -> list[float | None]:
    """Per sentence, the share of its private strings all of whose token ids are in the
    recovered ``bag`` (an attack that recovers tokens, not sentences); None when the sentence has
    no private string. ``critical_ids[i][k]``: the ids of sentence i's private string k as they
    occur in its encoding (an empty id list is never recovered)."""
    ids = set(bag)
    out: list[float | None] = []
    for strings in critical_ids:
        rows = check_id_lists(strings, "critical_ids[i]")
        out.append(sum(bool(row) and set(row) <= ids for row in rows) / len(rows)
                   if rows else None)
    return out
