"""The paper's named experiments: one YAML per table or figure (``configs/experiments``),
loaded into :class:`~gradleak.runs.spec.Experiment` grids and expanded into plans."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from gradleak.config import parse_override
from gradleak.errors import GradleakError
from gradleak.runs.kinds import KINDS
from gradleak.runs.spec import PROFILE_KEYS, PROFILES, TOP_KEYS, Experiment, Plan


def experiments_dir() -> Path:
    return Path(str(resources.files("gradleak").joinpath("configs/experiments")))


def load_experiment(name_or_path: str) -> Experiment:
    """A packaged experiment by name (``tab1``) or any experiment YAML file by path."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = experiments_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise GradleakError(f"unknown experiment {name_or_path!r}; allowed: "
                                f"{', '.join(experiment_names())} or a path to a YAML file")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise GradleakError(f"experiment file {path} is not valid YAML: {e}") from None
    unknown = set(spec) - TOP_KEYS
    if unknown:
        raise GradleakError(f"experiment file {path}: unknown keys {sorted(unknown)}; allowed: "
                            f"{', '.join(sorted(TOP_KEYS))}")
    for prof, over in (spec.get("profiles") or {}).items():
        if prof not in PROFILES:
            raise GradleakError(f"experiment file {path}: unknown profile {prof!r}; allowed: "
                                f"{', '.join(PROFILES)}")
        bad = set(over or {}) - PROFILE_KEYS
        if bad:
            raise GradleakError(f"experiment file {path}: profile {prof} has unknown keys "
                                f"{sorted(bad)}; allowed: {', '.join(sorted(PROFILE_KEYS))}")
    kind = spec.get("kind", "attack")
    KINDS.get(kind)  # one-line error on an unknown kind
    return Experiment(name=path.stem, title=spec.get("title", path.stem),
                      tests=spec.get("tests", ""), insight=spec.get("insight", ""), kind=kind,
                      spec=spec, path=path)


def experiment_names() -> list[str]:
    return sorted(p.stem for p in experiments_dir().glob("*.yaml"))


def make_plan(name: str, profile: str, overrides: list[str] | tuple[str, ...] = ()) -> Plan:
    """The runs of experiment ``name`` (or a YAML path) at ``profile``, with ``key=value``
    overrides applied to every run; every config is validated."""
    exp = load_experiment(name)
    extra = dict(parse_override(item) for item in overrides)
    return Plan(exp, profile, exp.validate(profile, extra), extra)
