"""gradleak works without Flower; gradleak.flower says how to get it."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "gradleak"


def test_only_gradleak_flower_imports_flwr():
    offenders = []
    for path in SRC.rglob("*.py"):
        if "flower" in path.relative_to(SRC).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(SRC)}: {n}" for n in names if n.split(".")[0] == "flwr"]
    assert not offenders


def test_gradleak_flower_without_flwr_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "gradleak.flower" or m.startswith("gradleak.flower.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "flwr", None)  # as if Flower were not installed
    with pytest.raises(ImportError, match=r"pip install 'gradleak\[flower\]'"):
        importlib.import_module("gradleak.flower")
