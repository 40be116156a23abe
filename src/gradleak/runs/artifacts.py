"""Artifacts a sweep builds once and shares between runs, cached under ``<out>/cache``.

* generators for GIA-L (``prepare: {name: {data: {...}, steps: N, ...}}`` in an experiment),
* language-model priors for LAMP (``prepare: {name: {kind: language_model, data: {...},
  steps: N, ...}}``: ``gradleak train-lm``'s settings; the value is the model directory),
* federated training runs whose per-round checkpoints a training-stage study attacks.

Each artifact lives in a folder named by the hash of what defines it and is built under an
exclusive POSIX file lock, so parallel workers (processes, or Ray tasks on nodes sharing the
sweep folder's file system) build it once;
a crash mid-build leaves a resumable checkpoint (generators) or is redone (federated runs).
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gradleak.errors import GradleakError
from gradleak.io import write_json

_GENERATOR_KEYS = {"data", "steps", "batch_size", "latent_dim", "width", "conditional", "lr",
                   "seed", "augment"}


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block.

    POSIX record locks (``lockf``), not ``flock``: NFS, Lustre, GPFS and CephFS honour them
    across nodes (storage needs: :mod:`gradleak.runs.sweep`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def ensure_generator(name: str, spec: dict[str, Any], cache: Path, *,
                     resolution: int | None = None, device: str = "cpu") -> Path:
    """Train (or reuse) the generator described by ``spec``; returns its ``generator.pt``.

    ``resolution`` (the run's ``data.resolution``) applies unless ``spec.data`` sets one, so one
    prepare entry serves every resolution of a grid; ``device`` is where it trains.
    """
    from gradleak.config import load_config
    from gradleak.generative.train import GENERATOR, GeneratorTraining, train_generator

    unknown = set(spec) - _GENERATOR_KEYS
    if unknown:
        raise GradleakError(f"prepare.{name}: unknown keys {sorted(unknown)}; allowed: "
                            f"{', '.join(sorted(_GENERATOR_KEYS))}")
    spec = copy.deepcopy(spec)
    if resolution is not None:
        spec.setdefault("data", {}).setdefault("resolution", resolution)
    data = load_config(base={"data": spec.get("data") or {}}).data
    settings = GeneratorTraining(**{k: v for k, v in spec.items() if k != "data"})
    folder = cache / "generators" / f"{name}-{_key(spec)}"
    with locked(folder.with_suffix(".lock")):
        path = folder / GENERATOR
        done = folder / "done.json"
        if not done.is_file():
            # The run's device (a GPU sweep trains its generator there too); the draws do not
            # depend on it, so the artifact's key leaves it out.
            train_generator(data, folder, settings, progress=False, device=device)
            write_json(done, {"spec": spec})
    return path


_LM_KEYS = {"kind", "data", "steps", "batch_size", "max_length", "lr", "warmup", "hidden_size",
            "layers", "heads", "seed"}
"""A language-model prior's keys: ``kind`` and `gradleak train-lm`'s settings."""


def ensure_prepared(name: str, spec: dict[str, Any], cache: Path, *,
                    resolution: int | None = None, device: str = "cpu") -> Path:
    """The artifact a ``prepare`` entry describes: a generator (default) or, with
    ``kind: language_model``, a ``train-lm`` directory."""
    kind = spec.get("kind", "generator") if isinstance(spec, dict) else None
    if kind == "language_model":
        return ensure_language_model(name, spec, cache)
    if kind != "generator":
        raise GradleakError(f"prepare.{name}: bad kind {kind!r}; allowed: generator, language_model")
    return ensure_generator(name, {k: v for k, v in spec.items() if k != "kind"}, cache,
                            resolution=resolution, device=device)


def ensure_language_model(name: str, spec: dict[str, Any], cache: Path) -> Path:
    """Train (or reuse) the ``gpt2-tiny`` causal LM ``spec`` describes (LAMP's prior); returns
    its directory. Trained on CPU: the draws and the result do not depend on the run's device."""
    from gradleak.config import load_config
    from gradleak.models.train_lm import LMTraining, train_lm

    unknown = set(spec) - _LM_KEYS
    if unknown:
        raise GradleakError(f"prepare.{name}: unknown keys {sorted(unknown)}; allowed: "
                            f"{', '.join(sorted(_LM_KEYS))}")
    data = load_config(base={"data": spec.get("data") or {"dataset": "wordnet-examples"}}).data
    settings = LMTraining(**{k: v for k, v in spec.items() if k not in ("kind", "data")})
    folder = cache / "language_models" / f"{name}-{_key(spec)}"
    with locked(folder.with_suffix(".lock")):
        done = folder / "done.json"
        if not done.is_file():
            train_lm(data, folder, settings, progress=False)
            write_json(done, {"spec": spec})
    return folder


def federated_key(cfg_dict: dict[str, Any]) -> str:
    """What defines a federated training run: data, model (no checkpoint), client, fl, seed."""
    model = {k: v for k, v in cfg_dict["model"].items() if k != "checkpoint"}
    return _key({"data": cfg_dict["data"], "model": model, "client": cfg_dict["client"],
                 "fl": cfg_dict["fl"], "defense": cfg_dict["defense"], "seed": cfg_dict["seed"],
                 "device": cfg_dict["device"]})


def ensure_federated(cfg: Any, cache: Path) -> tuple[Path, list[float]]:
    """Train the FL system of ``cfg`` once, saving the global model every round; returns the
    checkpoint folder (``round_XXX.pt``) and the test accuracy per round (round 0 = initial)."""
    from gradleak.fl.server import run_federated
    from gradleak.io import write_json as _write

    folder = cache / "federated" / federated_key(cfg.to_dict())
    with locked(folder.with_suffix(".lock")):
        done = folder / "accuracy.json"
        if not done.is_file():
            fed = run_federated(cfg, checkpoint_dir=folder, progress=False)
            _write(done, {"accuracy": list(fed.result.accuracy)})
        accuracy = json.loads(done.read_text())["accuracy"]
    return folder, [float(a) for a in accuracy]
