"""Model registry: ``build_model(cfg, ...)`` returns a :class:`Classifier` on images in [0, 1].

Each builder is ``builder(cfg: ModelConfig, *, num_classes, channels, resolution) -> nn.Module``
and is registered with ``@register_model(name)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gradleak.config import ModelConfig
from gradleak.errors import GradleakError
from gradleak.io import load_weights
from gradleak.models.base import Classifier
from gradleak.registry import Registry

MODELS: Registry = Registry("model")


def register_model(name: str):
    return MODELS.register(name)


SKIP_CUT_MODELS = ("resnet18", "resnet34", "resnet50", "resnet152")
DENSE_PATTERN_MODELS = ("densenet43", "densenet53")


def build_model(cfg: ModelConfig, *, num_classes: int, channels: int, resolution: int,
                mean: tuple[float, ...], std: tuple[float, ...]) -> Classifier:
    """Build ``cfg.name``, apply ``cfg.init`` and load ``cfg.checkpoint`` if given."""
    builder = MODELS.get(cfg.name)
    # Architecture switches only some models have: refuse instead of silently ignoring them.
    if cfg.skip_cuts and cfg.name not in SKIP_CUT_MODELS:
        raise GradleakError(f"model.skip_cuts={cfg.skip_cuts} needs a ResNet; model.name="
                            f"{cfg.name!r} has no residual blocks (allowed: {', '.join(SKIP_CUT_MODELS)})")
    if cfg.dense_connections != "full" and cfg.name not in DENSE_PATTERN_MODELS:
        raise GradleakError(f"model.dense_connections={cfg.dense_connections!r} needs one of "
                            f"{', '.join(DENSE_PATTERN_MODELS)}, not model.name={cfg.name!r}")
    net = builder(cfg, num_classes=num_classes, channels=channels, resolution=resolution)
    if not cfg.normalize:
        mean, std = (0.0,) * channels, (1.0,) * channels
    model = Classifier(net, mean=mean, std=std)
    if cfg.init == "uniform":
        _uniform_init(model)
    if cfg.checkpoint:
        load_checkpoint(model, cfg.checkpoint)
    return model


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
    if shapes:
        raise GradleakError(f"{where} does not fit the model: shape of {_names(shapes, 2)} "
                            "(file vs model)")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise GradleakError(f"{where} holds NaN or infinite values in {_names(bad)}")


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load ``model.checkpoint`` (a state_dict, or ``{"model": state_dict}``) as weights only."""
    p = Path(path)
    where = f"model.checkpoint {str(p)!r}"
    if not p.is_file():
        raise GradleakError(f"{where} does not exist")
    state = load_weights(p, where)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    check_state_dict(model, state, where)
    model.load_state_dict(state)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


from gradleak.models import convnet, densenet, inception, lenet, mlp, resnet, swin, vgg  # noqa: E402,F401

__all__ = ["MODELS", "Classifier", "build_model", "count_parameters", "register_model"]
