"""Audit an update a client really sent (``gradleak audit --update FILE``), not a simulated one.

The user recorded what one client shared in their own FL system (a Flower reply, their own
code): the update as a ``state_dict`` delta ``W_local - W_global``, the client's new weights
(``--update-is weights``: the global model, ``model.checkpoint``, is subtracted) or a raw
gradient (``--update-is gradient``), as ``.safetensors`` or a ``torch.save`` file loaded weights
only. The global model is the configured one (``model.name`` + ``model.checkpoint``), the
client's details are the ``client.*`` keys the user grants (protocol, lr, E, B, optimiser: what
the attack may simulate), ``data.num_samples`` the samples behind the update.

Every ladder level that needs no simulation of the client runs once on that update (level 4
needs the client's BN batch statistics, which a parameter delta does not carry; the malicious
level needs a crafted model). One update is one trial: with the samples the client trained on
(``--truth FILE.npz``: ``x``, ``y``) a level's reconstruction is scored and *leaks* when one of
them leaks by the project's criterion (an existence proof for this update); a level that finds
no leak says so, and nothing more: one update bounds no leak rate. Without them the report shows
the reconstructions and the attack's own evidence (final gradient loss, inferred labels) and
says that no similarity score can be computed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from gradleak.audit.ladder import Ladder, Level, Setup, level_config, skipped
from gradleak.config import Config
from gradleak.errors import GradleakError
from gradleak.update import SharedUpdate

UPDATE_KINDS = ("delta", "weights", "gradient")
NO_SIMULATION = {"batchnorm": "not run: a captured parameter update carries no BN batch "
                              "statistics (level 4 reads them from the client's round)"}
LEAKS, NO_LEAK, NOT_SCORED = "leaks", "no leak found in this update", "not scored"


def read_state(path: Path, where: str) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from ``.safetensors`` or a weights-only ``torch.save`` file."""
    from gradleak.io import load_weights

    if not path.is_file():
        raise GradleakError(f"{where} does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise GradleakError(f"{where}: reading .safetensors needs the safetensors package "
                                "(pip install safetensors), or save the update with torch.save"
                                ) from None
        try:
            state = load_file(str(path))
        except Exception as exc:  # not a safetensors file, truncated
            raise GradleakError(f"{where} is not a safetensors file: "
                                f"{(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
    else:
        state = load_weights(path, where)
    if not isinstance(state, dict) or not state:
        raise GradleakError(f"{where} must hold a state_dict (a mapping of names to tensors)")
    return state


def load_update(path: str | Path, model: torch.nn.Module, *, kind: str,
                num_samples: int) -> SharedUpdate:
    """The captured update of ``model``'s trainable parameters (``kind``: :data:`UPDATE_KINDS`);
    keys may be the user's bare module names or gradleak's (DataParallel prefixes stripped)."""
    from gradleak.models import map_checkpoint_keys

    if kind not in UPDATE_KINDS:
        raise GradleakError(f"bad value {kind!r} for --update-is; allowed: {', '.join(UPDATE_KINDS)}")
    where = f"--update {str(path)!r}"
    state = map_checkpoint_keys(read_state(Path(path), where), model)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n in params if not isinstance(state.get(n), torch.Tensor)]
    if missing:
        raise GradleakError(f"{where} has no tensor for the model's parameter {missing[0]!r} "
                            f"(it holds e.g. {next(iter(state))!r}); save the whole state_dict "
                            "of the model the global checkpoint belongs to")
    tensors: dict[str, torch.Tensor] = {}
    for name, p in params.items():
        t = state[name]
        if tuple(t.shape) != tuple(p.shape):
            raise GradleakError(f"{where}: shape of {name} {tuple(t.shape)} vs "
                                f"{tuple(p.shape)} (file vs model)")
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise GradleakError(f"{where}: {name} is not a finite float tensor")
        t = t.detach().float().cpu()
        tensors[name] = t - p.detach().float().cpu() if kind == "weights" else t
    if all(float(t.abs().max()) == 0.0 for t in tensors.values()):
        raise GradleakError(f"{where} is all zeros: the client changed nothing (with "
                            "--update-is weights: are these the global weights themselves?)")
    return SharedUpdate("gradient" if kind == "gradient" else "model_delta", tensors, num_samples)


def load_truth(path: str | Path, cfg: Config, *, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples the client trained on, ``--truth FILE.npz`` (``x``, ``y``; every one, in
    order), decoded like the audited data (its ``channels``, ``data.resolution``)."""
    from gradleak.data.npz import load_npz

    p = Path(path)
    if not p.is_file():
        raise GradleakError(f"--truth {str(p)!r} does not exist")
    # The file as its own test split: all of x/y, in order, no hold-out.
    data = load_npz(dataclasses.replace(cfg.data, dataset="npz", root=str(p), test_root=str(p),
                                        split="test", channels=channels))
    return data.tensors()


def runnable(ladder: Ladder, setup: Setup) -> list[tuple[Level, str | None]]:
    """The honest-but-curious levels and why each cannot run on a captured update (None: runs)."""
    out = []
    for level in ladder.levels:
        if level.level >= 5:
            continue
        why = NO_SIMULATION.get(level.needs or "") or skipped(level, setup)
        out.append((level, why))
    return out


def level_cfg(ladder: Ladder, level: Level, setup: Setup, budget: dict[str, Any], *,
              truth: bool) -> Config:
    """One level's config on the captured update; without a truth no label is granted."""
    extra: dict[str, Any] = {}
    if not truth and level.labels == "known":
        extra = {"threat.knows_labels": False, "attack.labels": ladder.labels[
            "one" if setup.num_samples == 1 else "many"]}
    return level_config(ladder, level, setup, budget, seed=setup.cfg.seed, extra=extra)
