"""Checks of a resolved config that read the file system but run no code (``gradleak config``).

A user model file is parsed with :mod:`ast`, never imported: ``gradleak config`` only shows what
a run would use, so it may not execute the user's code; the run imports it and checks the rest.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from gradleak.errors import GradleakError

# Keys naming a file or folder that must exist (unless data.download fetches the data).
_EXISTING = ("data.root", "data.test_root", "model.checkpoint")


def check_files(cfg: Any) -> None:
    """One line for a path key naming nothing, or a ``model.name=FILE.py:NAME`` whose file is
    missing, is not Python or defines no ``NAME`` at its top level."""
    for key in _EXISTING:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is None or (section == "data" and cfg.data.download):
            continue
        if not Path(value).expanduser().exists():
            raise GradleakError(f"{key}={value}: {str(Path(value).expanduser())!r} does not exist")
    location, _, attr = cfg.model.name.rpartition(":")
    if location.endswith(".py"):
        _check_model_file(Path(location).expanduser(), attr, cfg.model.name)


def _check_model_file(path: Path, attr: str, spec: str) -> None:
    if not path.is_file():
        raise GradleakError(f"model.name={spec}: file {str(path)!r} does not exist "
                            "(expected model.name=path/to/file.py:NAME)")
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError) as exc:
        raise GradleakError(f"model.name={spec}: {str(path)!r} is not Python: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                            ) from None
    names = _top_level_names(tree)
    if names is not None and attr not in names:
        shown = ", ".join(sorted(n for n in names if not n.startswith("_"))[:12]) or "none"
        raise GradleakError(f"model.name={spec}: {path.name} defines no {attr!r} at its top "
                            f"level (names there: {shown})")


def _top_level_names(tree: ast.Module) -> set[str] | None:
    """Names the module's top level binds; ``None`` when that cannot be known without running
    it (``from x import *``, a module ``__getattr__``, ``globals()``, ``match``, ``:=``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            return None
        if isinstance(node, (ast.Match, ast.NamedExpr)) or (
                isinstance(node, ast.Name) and node.id == "globals"):
            return None
    for node in tree.body:
        names |= _bound(node)
    return None if "__getattr__" in names else names


def _bound(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return {node.name}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    if isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):  # bodies run at import
        inner = [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", []),
                 *(s for h in getattr(node, "handlers", []) for s in h.body)]
        return set().union(*(_bound(s) for s in inner)) if inner else set()
    targets = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
