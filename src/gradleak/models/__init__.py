"""Model registry: ``build_model(cfg, ...)`` returns a :class:`Classifier` on images in [0, 1].

``model.name`` is a registered name or the user's own model, ``file.py:NAME`` or
``package.module:NAME`` (:mod:`gradleak.models.user`).

Each builder is ``builder(cfg: ModelConfig, *, num_classes, channels, resolution) -> nn.Module``
and is registered with ``@register_model(name)``.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradleak.config import ModelConfig
from gradleak.errors import GradleakError
from gradleak.io import load_weights
from gradleak.models.base import Classifier
from gradleak.models.precode import insert_precode
from gradleak.models.user import (
    USER_MODEL_KEYS,
    build_user_network,
    input_statistics,
    is_user_model,
    prepare_user_model,
)
from gradleak.registry import Registry

MODELS: Registry = Registry("model")


def register_model(name: str):
    return MODELS.register(name)


SKIP_CUT_MODELS = ("resnet18", "resnet34", "resnet50", "resnet152")
DENSE_PATTERN_MODELS = ("densenet43", "densenet53")


def unknown_model_message(name: str) -> str:
    """The one line for a ``model.name`` that names nothing: every kind that would be allowed."""
    from gradleak.models.hf import TEXT_MODELS

    return (f"unknown model {name!r}; allowed: image {', '.join(MODELS.names())}; text "
            f"{', '.join(TEXT_MODELS.names())}, hf:DIR; or your file.py:NAME")


def build_model(cfg: ModelConfig, *, num_classes: int, channels: int, resolution: int,
                mean: tuple[float, ...], std: tuple[float, ...]) -> Classifier:
    """Build ``cfg.name`` (a registered model or the user's ``file.py:NAME`` /
    ``package.module:NAME``), apply ``cfg.init`` and load ``cfg.checkpoint`` if given."""
    # Architecture switches only some models have: refuse instead of silently ignoring them.
    if cfg.skip_cuts and cfg.name not in SKIP_CUT_MODELS:
        raise GradleakError(f"model.skip_cuts={cfg.skip_cuts} needs a ResNet; model.name="
                            f"{cfg.name!r} has no residual blocks (allowed: {', '.join(SKIP_CUT_MODELS)})")
    if cfg.dense_connections != "full" and cfg.name not in DENSE_PATTERN_MODELS:
        raise GradleakError(f"model.dense_connections={cfg.dense_connections!r} needs one of "
                            f"{', '.join(DENSE_PATTERN_MODELS)}, not model.name={cfg.name!r}")
    if is_user_model(cfg.name):
        _ignored_switches(cfg)
        net = build_user_network(cfg.name, num_classes=num_classes, channels=channels,
                                 resolution=resolution)
    else:
        if cfg.name not in MODELS:
            raise GradleakError(unknown_model_message(cfg.name))
        if cfg.input_mean is not None or cfg.input_std is not None:
            raise GradleakError("model.input_mean / model.input_std are for your own model "
                                f"(model.name=file.py:NAME); built-in {cfg.name!r} is trained "
                                "from scratch on the dataset's statistics")
        net = MODELS.get(cfg.name)(cfg, num_classes=num_classes, channels=channels,
                                   resolution=resolution)
        if cfg.precode:  # a model change with its own utility cost (docs/defenses.md)
            net = insert_precode(net, cfg.precode_size, cfg.precode_beta)
    mean, std = input_statistics(channels=channels, dataset_mean=mean, dataset_std=std,
                                 normalize=cfg.normalize, input_mean=cfg.input_mean,
                                 input_std=cfg.input_std)
    model = Classifier(net, mean=mean, std=std)
    if cfg.init == "uniform":
        _uniform_init(model)
    if cfg.checkpoint:
        load_checkpoint(model, cfg.checkpoint)
    if cfg.lora_rank > 0 or cfg.lora_targets:
        raise GradleakError(f"model.lora_rank / lora_targets are for text models, not "
                            f"model.name={cfg.name!r}; share part of an image model with "
                            "model.frozen=[PREFIX, ...]")
    if cfg.frozen:
        from gradleak.models.partial import freeze

        freeze(model, cfg.frozen)
    return model


def _ignored_switches(cfg: ModelConfig) -> None:
    """A user model has its own architecture: built-in switches set away from their defaults
    (e.g. by an audit plan written for the built-in ConvNet) are ignored with a warning, and
    left out of the recorded config (:func:`recorded_model_config`)."""
    defaults = ModelConfig()
    changed = [f.name for f in dataclasses.fields(cfg) if f.name not in USER_MODEL_KEYS
               and getattr(cfg, f.name) != getattr(defaults, f.name)]
    if changed:
        warnings.warn(f"ignored for your own model {cfg.name!r}: "
                      f"{', '.join('model.' + k for k in changed)} (built-in model switches; "
                      f"keys that apply: {', '.join('model.' + k for k in USER_MODEL_KEYS)})",
                      stacklevel=3)


def recorded_model_config(cfg: ModelConfig) -> dict[str, Any]:
    """The ``model`` section as a result records it: for a user model only the keys that apply
    to it (the built-in architecture switches are left out)."""
    tree = dataclasses.asdict(cfg)
    if is_user_model(cfg.name):
        tree = {k: v for k, v in tree.items() if k in USER_MODEL_KEYS}
    return tree


def _uniform_init(model: nn.Module, bound: float = 0.5) -> None:
    """DLG's initialisation (Zhu et al. 2019): every weight and bias ~ U(-bound, bound)."""
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-bound, bound)


def _names(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_state_dict(model: nn.Module, state: object, where: str) -> None:
    """Raise one GradleakError unless ``state`` fits ``model`` exactly: names the missing and
    unexpected keys, mismatched shapes and non-finite weights."""
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise GradleakError(f"{where} is not a state_dict (got {type(state).__name__}); expected "
                            "a dict of parameter name -> tensor")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise GradleakError(f"{where}: entries {_names(not_tensors)} are not tensors")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing keys {_names(missing)}"] if missing else []) + (
            [f"unexpected keys {_names(unexpected)}"] if unexpected else [])
        raise GradleakError(f"{where} does not fit the model ({'; '.join(parts)}); was it saved "
                            "from another model or config?")
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if tuple(state[k].shape) != tuple(v.shape)]
    if shapes and (hint := _channel_hint(expected, state, where)):
        raise GradleakError(hint)
    if shapes:
        raise GradleakError(f"{where} does not fit the model: shape of {_names(shapes, 2)} "
                            "(file vs model)")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise GradleakError(f"{where} holds NaN or infinite values in {_names(bad)}")


def _channel_hint(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
                  where: str) -> str:
    """The one line for a checkpoint trained on another channel count: its first conv weight
    ``[out, C, k, k]`` differs from the model's only in C (both 1 or 3), else ``""``."""
    key = next((k for k, v in expected.items() if v.ndim == 4 and v.is_floating_point()), None)
    if key is None:
        return ""
    file, model = tuple(state[key].shape), tuple(expected[key].shape)
    if file == model or file[:1] + file[2:] != model[:1] + model[2:] or \
            {file[1], model[1]} != {1, 3}:
        return ""
    return (f"{where} was trained on {file[1]}-channel images ({key} {file}) but the data has "
            f"{model[1]} channels; set data.channels={file[1]}")


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load ``model.checkpoint`` (a state_dict, or ``{"model": state_dict}``) as weights only."""
    p = Path(path)
    where = f"model.checkpoint {str(p)!r}"
    if not p.is_file():
        raise GradleakError(f"{where} does not exist")
    state = map_checkpoint_keys(load_weights(p, where), model)
    check_state_dict(model, state, where)
    model.load_state_dict(state)


# Wrappers training scripts save the state_dict under, and prefixes they add to every key
# (DataParallel/DistributedDataParallel: "module.", torch.compile: "_orig_mod.").
_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def map_checkpoint_keys(state: Any, model: nn.Module) -> Any:
    """The user's ``state_dict`` as saved by their training code, keyed like ``model``.

    Unwraps ``{"state_dict": ...}``-style containers, strips DataParallel / torch.compile
    prefixes and, for a :class:`Classifier`, adds the ``net.`` prefix when the checkpoint holds
    the bare network (``torch.save(net.state_dict())`` in the user's own code).
    """
    if not isinstance(state, dict):
        return state
    for key in _STATE_KEYS:
        inner = state.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(k, str) for k in inner):
            state = inner
            break
    keys = [k for k in state if isinstance(k, str)]
    for prefix in _WRAPPER_PREFIXES:
        if keys and all(k.startswith(prefix) for k in keys):
            state = {k[len(prefix):]: v for k, v in state.items()}
            keys = list(state)
    expected = set(model.state_dict())
    if isinstance(model, Classifier) and keys and not (set(keys) & expected):
        prefixed = {f"net.{k}": v for k, v in state.items()}
        if set(prefixed) & expected:
            state = prefixed
    return state


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


from gradleak.models import convnet, densenet, inception, lenet, mlp, resnet, swin, vgg  # noqa: E402,F401

__all__ = ["MODELS", "Classifier", "build_model", "count_parameters", "is_user_model",
           "prepare_user_model", "recorded_model_config", "register_model"]
