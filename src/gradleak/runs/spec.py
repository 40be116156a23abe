"""Grids of runs: an :class:`Experiment` (the paper's named studies, an audit, a
privacy-utility grid) expanded into :class:`RunSpec` s, gathered in a :class:`Plan` for the sweep.

An experiment (a YAML file, see :mod:`gradleak.experiments.catalog`, or built in code) holds

* ``title``, ``tests`` (one line: what it measures), ``insight`` (the paper's words), ``kind``
  (how one run is executed, see :mod:`gradleak.runs.kinds`);
* ``base``: dotted config keys shared by every run; ``grid``: axes whose values are crossed;
  ``variants``: named override sets (the series of a table row) crossed with the grid;
  ``seeds``; ``prepare``: artifacts built once and shared (a generator for GIA-L);
* ``profiles.quick`` / ``profiles.long`` (optional) / ``profiles.paper``: overrides of the
  above (``base`` and ``prepare`` are merged key by key, ``grid`` axis by axis, ``variants``
  and ``seeds`` replaced);
* ``table``, ``plot``, ``verdict`` and ``paper`` (the published numbers) for the report.

Axes named ``run.<key>`` are options of the run kind (e.g. ``run.round`` of a training-stage
study) rather than config keys. Values may contain ``${name}``: the path of prepared artifact
``name``, substituted when the run executes (so a run's id does not depend on the output folder).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from gradleak.config import Config, flatten, load_config, refuse_code, set_key, unflatten
from gradleak.errors import GradleakError

PROFILES = ("quick", "long", "paper")
OPTIONAL_PROFILES = frozenset({"long"})
"""Profiles an experiment may lack: ``long`` exists where a finding needs a bigger CPU budget
(<= ~1 h on 2 cores) than ``quick`` to decide; asking an experiment without one is an error,
not a silent fall-back to the paper's full settings."""
TOP_KEYS = {"title", "tests", "insight", "kind", "base", "grid", "variants", "seeds", "prepare",
             "profiles", "table", "plot", "verdict", "paper", "names", "options"}
PROFILE_KEYS = {"base", "grid", "variants", "seeds", "prepare", "options"}


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a kind, its config overrides, the seed and its grid labels."""

    experiment: str
    kind: str
    variant: str
    labels: dict[str, Any]  # axis -> value (grid axes only)
    overrides: dict[str, Any]  # dotted config key -> value, ``${artifact}`` unresolved
    options: dict[str, Any]  # run.<key> axes and the experiment's kind options
    seed: int
    prepare: dict[str, Any] = field(default_factory=dict)  # the artifacts ${name} refers to

    @cached_property
    def run_id(self) -> str:
        """Stable id: the experiment, kind, config (placeholders unresolved), options, seed and
        the specs of the artifacts it uses (retraining a generator differently is a new run)."""
        key = {"experiment": self.experiment, "kind": self.kind,
               "config": self.config(resolve=None).to_dict(), "options": self.options}
        if self.prepare:
            key["prepare"] = self.prepare
        blob = json.dumps(key, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @cached_property
    def tree(self) -> Config:
        """The run's validated Config with ``${name}`` placeholders kept: parsed once per spec
        (or handed over ready-made by :meth:`of`)."""
        items = dict(self.overrides)
        items["seed"] = self.seed
        # The experiment file's part was checked in Experiment.runs; the rest the user typed.
        return load_config(base=unflatten(items), trusted_base=True)

    def config(self, *, resolve: dict[str, str] | None) -> Config:
        """A copy of the run's validated Config; ``resolve`` maps artifact names to paths (None:
        keep the ``${name}`` placeholders). Only substituted keys are set (and checked) again."""
        cfg = copy.deepcopy(self.tree)
        for key, value in self.overrides.items():
            new = _substitute(value, resolve)
            if new is not value:
                set_key(cfg, key, new)
        return cfg

    @classmethod
    def of(cls, experiment: str, kind: str, variant: str, labels: dict[str, Any], cfg: Config,
           options: dict[str, Any] | None = None) -> RunSpec:
        """The run of a ready, validated ``cfg`` (every key, so the run is that config): its
        tree is kept, not parsed again from the overrides."""
        overrides = {k: v for k, v in flatten(cfg.to_dict()) if k != "seed"}
        spec = cls(experiment, kind, variant, labels, overrides, dict(options or {}), int(cfg.seed))
        spec.__dict__["tree"] = copy.deepcopy(cfg)  # cached_property's slot, as if computed
        return spec

    @classmethod
    def from_dict(cls, run: dict[str, Any]) -> RunSpec:
        """The inverse of :meth:`to_dict` (``run_id`` is recomputed, not trusted)."""
        return cls(run["experiment"], run["kind"], run["variant"], run["labels"], run["overrides"],
                   run["options"], run["seed"], run.get("prepare") or {})

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "experiment": self.experiment, "kind": self.kind,
                "variant": self.variant, "labels": self.labels, "overrides": self.overrides,
                "options": self.options, "seed": self.seed, "prepare": self.prepare}


@dataclass
class Experiment:
    """A named experiment as read from its YAML (see the module docstring)."""

    name: str
    title: str
    tests: str
    insight: str
    kind: str
    spec: dict[str, Any]
    path: Path | None = None

    def profile(self, name: str) -> dict[str, Any]:
        """The experiment's settings with profile ``name`` applied."""
        if name not in self.profile_names():
            raise GradleakError(f"bad profile {name!r} for experiment {self.name}; allowed: "
                                f"{', '.join(self.profile_names())}")
        merged = {k: copy.deepcopy(self.spec.get(k)) for k in PROFILE_KEYS}
        over = (self.spec.get("profiles") or {}).get(name) or {}
        for key, value in over.items():
            if key in ("base", "prepare", "options", "grid"):
                merged[key] = {**(merged[key] or {}), **value}
            else:
                merged[key] = value
        return merged

    def profile_names(self) -> list[str]:
        """The profiles this experiment has: ``quick`` and ``paper`` always, ``long`` if defined."""
        defined = set(self.spec.get("profiles") or {})
        return [p for p in PROFILES if p not in OPTIONAL_PROFILES or p in defined]

    def runs(self, profile: str, extra: dict[str, Any] | None = None) -> list[RunSpec]:
        """Every run of the profile's grid, variants outermost, seeds innermost; ``extra``
        dotted keys (the user's command-line overrides) win over everything."""
        p = self.profile(profile)
        base = dict(p["base"] or {})
        grid: dict[str, list[Any]] = p["grid"] or {}
        variants: dict[str, dict[str, Any]] = p["variants"] or {"default": {}}
        seeds = p["seeds"] if p["seeds"] is not None else [0]
        options = dict(p["options"] or {})
        prepare = p["prepare"] or {}
        for axis, values in grid.items():
            if not isinstance(values, list) or not values:
                raise GradleakError(f"experiment {self.name}: grid axis {axis!r} needs a non-empty "
                                    f"list, got {values!r}")
        out = []
        for vname, vover in variants.items():
            for combo in itertools.product(*grid.values()) if grid else [()]:
                labels = dict(zip(grid, combo, strict=True))
                overrides = {**base, **(vover or {})}
                run_opts = dict(options)
                for axis, value in labels.items():
                    if axis.startswith("run."):
                        run_opts[axis[4:]] = value
                    else:
                        overrides[axis] = value
                refuse_code(overrides, f"the experiment file {self.path or self.name}",
                            unless=extra or {})
                overrides.update(extra or {})
                used = {}
                for value in overrides.values():
                    for name in re.findall(r"\$\{(\w+)\}", value if isinstance(value, str) else ""):
                        if name not in prepare:
                            raise GradleakError(f"experiment {self.name}: ${{{name}}} is not a prepare "
                                                f"entry; prepared: {', '.join(prepare) or 'none'}")
                        used[name] = prepare[name]
                for seed in seeds:
                    out.append(RunSpec(self.name, self.kind, str(vname), labels, overrides,
                                       run_opts, int(seed), used))
        return out

    def validate(self, profile: str, extra: dict[str, Any] | None = None) -> list[RunSpec]:
        """Expand ``profile`` and :func:`preflight` every run, so a typo fails before any work."""
        runs = self.runs(profile, extra)
        preflight(runs, profile)
        return runs


def preflight(runs: list[RunSpec], profile: str, *, data: bool = False) -> None:
    """Check every run's config and what its scenario would refuse
    (:func:`gradleak.scenario.preflight`: attack name and settings, threat grants, defense,
    model, dataset name; with ``data`` also the dataset's files, loaded once per distinct data
    section), so a grid that cannot run fails in one line naming the run before any starts."""
    from gradleak.scenario import preflight as check

    checked: set[str] = set()
    loaded: set[str] = set()
    for run in runs:
        key = json.dumps(run.overrides, sort_keys=True, default=str)
        if key in checked:  # seeds share the rest of the config
            continue
        checked.add(key)
        try:
            cfg = run.config(resolve=None)
            data_key = json.dumps(dataclasses.asdict(cfg.data), sort_keys=True)
            check(cfg, data=data and data_key not in loaded)
            loaded.add(data_key)
        except GradleakError as e:
            raise GradleakError(f"experiment {run.experiment} ({profile}), variant {run.variant} "
                                f"{run.labels}: {e}") from None


def _substitute(value: Any, resolve: dict[str, str] | None) -> Any:
    if resolve is None or not isinstance(value, str) or "${" not in value:
        return value
    for name, path in resolve.items():
        value = value.replace("${" + name + "}", str(path))
    if "${" in value:
        raise GradleakError(f"unresolved artifact in {value!r}; prepared: {', '.join(resolve) or 'none'}")
    return value


@dataclass
class Plan:
    """An experiment's runs for one profile, with the settings the report needs."""

    experiment: Experiment
    profile: str
    runs: list[RunSpec] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment.name, "profile": self.profile,
                "title": self.experiment.title, "tests": self.experiment.tests,
                "insight": self.experiment.insight, "kind": self.experiment.kind,
                "settings": self.experiment.profile(self.profile),
                "overrides": self.overrides, "spec": self.experiment.spec,
                "runs": [r.to_dict() for r in self.runs]}
