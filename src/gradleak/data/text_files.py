"""The user's own text (``data.dataset=text``, ``data.root=FILE``).

* ``.txt``: one sentence per line (blank lines skipped), one class;
* ``.jsonl``: one JSON object per line, text in ``data.text_column``, label in
  ``data.label_column`` (strings or ints; absent or null column: one class);
* ``.csv``: a header row, the same columns.

``data.test_root`` names a separate test file; otherwise ``data.holdout`` of the distinct
sentences (by text hash) is the test split.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from gradleak.config import DataConfig
from gradleak.data import register_dataset
from gradleak.data.text import TextDataset, split_texts
from gradleak.errors import GradleakError

SUFFIXES = (".txt", ".jsonl", ".csv")


def _rows(path: Path, text_col: str, label_col: str | None,
          key: str = "data.root") -> list[tuple[str, str]]:
    if not path.is_file():
        raise GradleakError(f"{key}={path}: file does not exist (a {', '.join(SUFFIXES)} file)")
    if path.suffix not in SUFFIXES:
        raise GradleakError(f"{key}={path}: unsupported file type {path.suffix or '(none)'!r}; "
                            f"allowed: {', '.join(SUFFIXES)}")
    try:  # strict: replacing bad bytes would silently change the user's sentences
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise GradleakError(f"{key}={path}: not UTF-8 text (byte {e.object[e.start]:#04x} at "
                            f"offset {e.start}); save the file as UTF-8") from None
    if path.suffix == ".txt":
        return [(line.strip(), "text") for line in raw.splitlines() if line.strip()]
    records: list[dict] = []
    if path.suffix == ".jsonl":
        for n, line in enumerate(raw.split("\n"), 1):  # not splitlines: U+2028 is valid JSON
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise GradleakError(f"{key}={path}: line {n} is not JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise GradleakError(f"{key}={path}: line {n} is not a JSON object")
            records.append(obj)
    else:
        records = list(csv.DictReader(io.StringIO(raw, newline="")))  # keeps quoted newlines
    if records and text_col not in records[0]:
        raise GradleakError(f"{key}={path}: no column {text_col!r} (data.text_column); "
                            f"columns found: {', '.join(map(str, records[0]))}")
    use_label = label_col is not None and bool(records) and label_col in records[0]
    return [(str(r.get(text_col) or "").strip(), str(r.get(label_col)) if use_label else "text")
            for r in records if str(r.get(text_col) or "").strip()]


@register_dataset("text")
def text_file(cfg: DataConfig) -> TextDataset:
    """Your own text: data.root=FILE (.txt one sentence per line, .jsonl or .csv with columns)."""
    if not cfg.root:
        raise GradleakError("data.dataset=text needs data.root=FILE (.txt, .jsonl or .csv)")
    rows = _rows(Path(cfg.root), cfg.text_column, cfg.label_column)
    test_rows = (_rows(Path(cfg.test_root), cfg.text_column, cfg.label_column, "data.test_root")
                 if cfg.test_root else None)
    if not rows:
        raise GradleakError(f"data.root={cfg.root}: the file holds no text")
    classes = tuple(sorted({y for _, y in rows + (test_rows or [])}))
    index = {c: i for i, c in enumerate(classes)}
    name = f"text:{Path(cfg.root).name}"
    if test_rows is not None:
        chosen = test_rows if cfg.split == "test" else rows
        if not chosen:
            raise GradleakError(f"data.test_root={cfg.test_root}: the file holds no text")
        return TextDataset(name, [t for t, _ in chosen], [index[y] for _, y in chosen], classes,
                           split_note=f"{cfg.split}: " + ("data.test_root" if cfg.split == "test"
                                                           else "data.root"))
    parts = split_texts([t for t, _ in rows], [index[y] for _, y in rows], None, split=cfg.split,
                        holdout=cfg.holdout)
    if not parts["texts"]:
        raise GradleakError(f"data.root={cfg.root}: no sentence falls in the {cfg.split} split "
                            f"(data.holdout={cfg.holdout}); add sentences or give data.test_root")
    return TextDataset(name, parts["texts"], parts["labels"], classes,
                       split_note=parts["split_note"])
