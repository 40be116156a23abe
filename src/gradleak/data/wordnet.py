"""WordNet 3.0 as text data, offline from Debian's ``wordnet-base`` (``/usr/share/wordnet``).

Every synset line of ``data.noun/verb/adj/adv`` holds its lexicographer file (``lex_filenum``,
e.g. 05 = ``noun.animal``) and a gloss: a definition, then optional quoted examples. That gives
two real tasks (Miller 1995; lexnames(5WN)):

* ``wordnet``: glosses classified into the 45 lexicographer files (sequence classification);
* ``wordnet-examples``: the quoted example sentences, same labels (the generation data of causal
  LMs, e.g. ``gradleak train-lm``).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from gradleak.config import DataConfig
from gradleak.data import register_dataset
from gradleak.data.text import TextDataset, split_texts
from gradleak.errors import GradleakError

DEFAULT_ROOT = "/usr/share/wordnet"
FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather",
    "adj.ppl",
)
_QUOTED = re.compile(r'"([^"]+)"')


def wordnet_files(root: str | None) -> list[Path]:
    """The four data files under ``root`` (default Debian's); one line when missing."""
    base = Path(root or DEFAULT_ROOT)
    paths = [base / f for f in FILES]
    if not all(p.is_file() for p in paths):
        raise GradleakError(f"WordNet not found at {base}: install Debian's wordnet-base "
                            "(apt-get install wordnet-base) or set data.root")
    return paths


@functools.lru_cache(maxsize=4)
def _parse(paths: tuple[Path, ...], stamp: tuple[float, ...]) -> tuple[list, list]:
    """``(glosses, examples)``, each a list of ``(text, lexname index)``; cached per file set
    and modification times."""
    glosses, examples = [], []
    for path in paths:
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  ") or "|" not in line:
                    continue  # the license header
                head, gloss = line.split("|", 1)
                lex = int(head.split(" ", 2)[1])
                gloss = gloss.strip()
                definition = gloss.split('; "', 1)[0].strip().rstrip(";").strip()
                if definition:
                    glosses.append((definition, lex))
                examples += [(q.strip(), lex) for q in _QUOTED.findall(gloss) if len(q.split()) > 1]
    return glosses, examples


def wordnet_corpus(root: str | None = None, *, part: str = "glosses") -> list[tuple[str, int]]:
    """All ``(text, lexname index)`` pairs of one ``part`` (``glosses`` or ``examples``)."""
    paths = tuple(wordnet_files(root))
    glosses, examples = _parse(paths, tuple(p.stat().st_mtime for p in paths))
    return glosses if part == "glosses" else examples


def _dataset(cfg: DataConfig, part: str, name: str) -> TextDataset:
    pairs = wordnet_corpus(cfg.root, part=part)
    parts = split_texts([t for t, _ in pairs], [y for _, y in pairs], None, split=cfg.split,
                        holdout=cfg.holdout)
    return TextDataset(name, parts["texts"], parts["labels"], LEXNAMES,
                       split_note=parts["split_note"], transform_note=f"WordNet 3.0 {part}")


@register_dataset("wordnet")
def wordnet(cfg: DataConfig) -> TextDataset:
    """WordNet glosses labelled by lexicographer file (45 classes; text, offline)."""
    return _dataset(cfg, "glosses", "wordnet")


@register_dataset("wordnet-examples")
def wordnet_examples(cfg: DataConfig) -> TextDataset:
    """WordNet's quoted example sentences, labelled by lexicographer file (text, offline)."""
    return _dataset(cfg, "examples", "wordnet-examples")
