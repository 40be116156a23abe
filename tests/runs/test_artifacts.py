"""Prepared artifacts: a LAMP prior (``kind: language_model``) is trained once and reused; bad
prepare entries are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from gradleak.errors import GradleakError  # noqa: E402
from gradleak.runs.artifacts import ensure_prepared  # noqa: E402

LM = {"kind": "language_model", "data": {"dataset": "wordnet-examples"}, "steps": 3,
      "batch_size": 4, "max_length": 16, "hidden_size": 16, "layers": 1, "heads": 2, "warmup": 1}


def test_a_language_model_is_trained_once_and_reused(tmp_path):
    path = ensure_prepared("prior", LM, tmp_path)
    report = json.loads((Path(path) / "training.json").read_text())
    assert report["steps"] == 3 and (Path(path) / "config.json").is_file()
    stamp = (Path(path) / "config.json").stat().st_mtime_ns
    assert ensure_prepared("prior", LM, tmp_path) == path
    assert (Path(path) / "config.json").stat().st_mtime_ns == stamp  # not retrained
    other = ensure_prepared("prior", {**LM, "steps": 4}, tmp_path)
    assert other != path  # another spec, another folder


@pytest.mark.parametrize("spec, fragment", [
    ({**LM, "epochs": 2}, "unknown keys"),
    ({"kind": "mystery"}, "bad kind"),
])
def test_bad_prepare_entries_are_one_line(tmp_path, spec, fragment):
    with pytest.raises(GradleakError, match=fragment):
        ensure_prepared("prior", spec, tmp_path)
