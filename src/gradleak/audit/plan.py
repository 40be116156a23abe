"""The input audit plan (the packaged ``configs/audit.yaml`` or ``--plan FILE``): read and
checked in one place, before any scenario runs."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gradleak.errors import GradleakError

# A scenario name becomes a folder under --out: one path component, no traversal.
SCENARIO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
PLAN_KEYS = {"base", "scenarios", "title", "description"}
SCENARIO_KEYS = {"name", "title", "set"}


def load_audit_plan(path: str | Path | None) -> dict[str, Any]:
    """Read and validate an audit plan (default: the packaged ``configs/audit.yaml``).

    A plan is ``{base: {section: {key: value}}, scenarios: [{name, title?, set?: {dotted.key:
    value}}]}``; every problem is one GradleakError before any scenario runs."""
    if path is None:
        where = "the packaged audit plan"
        text = resources.files("gradleak").joinpath("configs/audit.yaml").read_text()
    else:
        where = f"audit plan {str(path)!r}"
        p = Path(path)
        if not p.is_file():
            raise GradleakError(f"{where} does not exist (or is not a file)")
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise GradleakError(f"{where} cannot be read as text: {exc}") from None
    try:
        plan = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0]
        raise GradleakError(f"{where} is not valid YAML: {first}") from None
    validate_plan(plan, where)
    return plan


def validate_plan(plan: Any, where: str = "audit plan") -> None:
    """One-line errors for a malformed plan; see :func:`load_audit_plan`."""
    if not isinstance(plan, dict):
        raise GradleakError(f"{where} must be a mapping with 'scenarios' (and optional 'base'), "
                            f"got {type(plan).__name__ if plan is not None else 'an empty file'}")
    unknown = sorted(map(str, set(plan) - PLAN_KEYS))
    if unknown:
        raise GradleakError(f"{where}: unknown keys {unknown}; allowed: {sorted(PLAN_KEYS)}")
    if not isinstance(plan.get("base", {}), dict):
        raise GradleakError(f"{where}: 'base' must be a mapping of config sections")
    scenarios = plan.get("scenarios")
    if not isinstance(scenarios, list) or not scenarios:
        raise GradleakError(f"{where} needs 'scenarios': a non-empty list of "
                            "{name, title, set} mappings")
    seen: set[str] = set()
    for i, s in enumerate(scenarios, 1):
        if not isinstance(s, dict):
            raise GradleakError(f"{where}: scenario {i} must be a mapping with 'name', got "
                                f"{type(s).__name__}")
        unknown = sorted(map(str, set(s) - SCENARIO_KEYS))
        if unknown:
            raise GradleakError(f"{where}: scenario {i} has unknown keys {unknown}; allowed: "
                                f"{sorted(SCENARIO_KEYS)}")
        name = s.get("name")
        if not isinstance(name, str) or not SCENARIO_NAME.fullmatch(name) or name.strip(".") == "":
            raise GradleakError(f"{where}: scenario {i} name {name!r} must be letters, digits, "
                                "'_', '-' or '.' (one folder name, not a path)")
        if name in seen:
            raise GradleakError(f"{where}: scenario name {name!r} is used twice; names must be "
                                "unique (each is a folder)")
        seen.add(name)
        if not isinstance(s.get("title", name), str):
            raise GradleakError(f"{where}: scenario {name!r} title must be text")
        if not isinstance(s.get("set", {}), dict):
            raise GradleakError(f"{where}: scenario {name!r} 'set' must be a mapping of "
                                "dotted.key: value, got a list" if isinstance(s.get("set"), list)
                                else f"{where}: scenario {name!r} 'set' must be a mapping of "
                                "dotted.key: value")
