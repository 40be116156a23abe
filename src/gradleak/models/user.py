"""The practitioner's own model: ``model.name=path/to/file.py:NAME`` or ``package.module:NAME``.

``NAME`` is an ``nn.Module`` class or a factory returning one; it is called with those of
``num_classes``, ``channels`` and ``resolution`` its signature accepts. The file or module is
imported only because the user typed its name as ``model.name`` (user code enters through an
option, never through a data file). :func:`prepare_user_model` wraps an instance so it takes
images in [0, 1] like every built-in model, normalising them first when asked.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradleak.config import names_code
from gradleak.errors import GradleakError
from gradleak.models.base import Classifier

BUILD_ARGS = ("num_classes", "channels", "resolution")
# Model keys a user model honours; the architecture switches of the built-in models do not apply.
USER_MODEL_KEYS = ("name", "init", "checkpoint", "normalize", "input_mean", "input_std", "frozen")
_FORMS = "expected model.name=path/to/file.py:NAME or package.module:NAME"


def is_user_model(name: str) -> bool:
    """Whether ``model.name`` names user code (``...:NAME``) rather than a registered model."""
    return names_code("model.name", name)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):  # user code must not end gradleak (exit 0, nothing run)
        return f"it called sys.exit({exc.code!r})"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _import_file(path: Path, spec_text: str) -> Any:
    if not path.is_file():
        raise GradleakError(f"model.name={spec_text!r}: file {str(path)!r} does not exist ({_FORMS})")
    # A name unique per absolute path, so two files called model.py do not collide.
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    mod_name = f"gradleak_user_model_{path.stem}_{digest}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise GradleakError(f"model.name={spec_text!r}: cannot import {str(path)!r} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # dataclasses and pickling look the module up here
    # The file may import its siblings (``from layers import Block``), as under ``python file.py``;
    # appended, not prepended, so a sibling never shadows an installed module.
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.append(folder)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # the user's code may raise anything: one line
        del sys.modules[mod_name]
        raise GradleakError(f"model.name={spec_text!r}: importing {str(path)!r} failed: "
                            f"{_one_line(exc)}") from None
    return module


def _import_module(name: str, spec_text: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise GradleakError(f"model.name={spec_text!r}: no module named {exc.name or name!r} "
                            f"({_FORMS})") from None
    except (Exception, SystemExit) as exc:
        raise GradleakError(f"model.name={spec_text!r}: importing {name!r} failed: "
                            f"{_one_line(exc)}") from None


def resolve_factory(spec_text: str) -> Callable[..., nn.Module]:
    """The class or factory ``spec_text`` names (imports the file or module)."""
    location, _, attr = spec_text.rpartition(":")
    if not location or not attr.isidentifier():
        raise GradleakError(f"bad value {spec_text!r} for model.name: {_FORMS}")
    is_file = location.endswith(".py") or "/" in location or "\\" in location
    module = (_import_file(Path(location).expanduser(), spec_text) if is_file
              else _import_module(location, spec_text))
    if not hasattr(module, attr):
        found = sorted(n for n, v in vars(module).items() if not n.startswith("_") and _usable(v))
        raise GradleakError(f"model.name={spec_text!r}: {location} has no {attr!r} "
                            f"(nn.Module classes and functions there: {', '.join(found) or 'none'})")
    obj = getattr(module, attr)
    if not _usable(obj):
        kind = "a class that is not an nn.Module" if inspect.isclass(obj) else f"a {type(obj).__name__}"
        raise GradleakError(f"model.name={spec_text!r}: {attr} is {kind}; expected an nn.Module "
                            "class or a factory function returning one")
    return obj


def _usable(obj: Any) -> bool:
    """An ``nn.Module`` class or a Python function (or ``functools.partial`` of one): not any
    callable, so a name can never reach builtins such as ``os.system``."""
    if inspect.isclass(obj):
        return issubclass(obj, nn.Module)
    if isinstance(obj, functools.partial):
        return _usable(obj.func)
    return inspect.isfunction(obj)


def build_arguments(factory: Callable[..., Any], values: dict[str, int]) -> dict[str, int]:
    """Those of ``values`` that ``factory``'s signature accepts (all of them with ``**kwargs``)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # some builtins have no signature: pass nothing
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(values)
    usable = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {k: v for k, v in values.items() if k in params and params[k].kind in usable}


def build_user_network(spec_text: str, *, num_classes: int, channels: int,
                       resolution: int) -> nn.Module:
    """Import and call ``spec_text``; check it maps ``[2, C, R, R]`` to ``[2, num_classes]``."""
    factory = resolve_factory(spec_text)
    values = {"num_classes": num_classes, "channels": channels, "resolution": resolution}
    kwargs = build_arguments(factory, values)
    shown = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    try:
        net = factory(**kwargs)
    except (Exception, SystemExit) as exc:
        raise GradleakError(f"model.name={spec_text!r}: calling {getattr(factory, '__name__', 'it')}"
                            f"({shown}) failed: {_one_line(exc)}") from None
    if not isinstance(net, nn.Module):
        raise GradleakError(f"model.name={spec_text!r}: returned a {type(net).__name__}, "
                            "not an nn.Module")
    check_output(net, num_classes=num_classes, channels=channels, resolution=resolution,
                 who=f"model.name={spec_text!r}")
    return net


def check_output(net: nn.Module, *, num_classes: int, channels: int, resolution: int,
                 who: str) -> None:
    """One forward pass of zeros in eval mode (no running statistics change): logits must be
    ``[2, num_classes]`` and there must be trainable parameters."""
    if not any(p.requires_grad for p in net.parameters()):
        raise GradleakError(f"{who}: the model has no trainable parameters")
    device = next(net.parameters()).device
    if device.type == "meta":
        return
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(2, channels, resolution, resolution, device=device))
    except (Exception, SystemExit) as exc:
        raise GradleakError(channel_mismatch(net, channels, resolution, who) or
                            f"{who}: forward pass on [2, {channels}, {resolution}, {resolution}] "
                            f"images failed: {_one_line(exc)}") from None
    finally:
        net.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise GradleakError(f"{who}: maps [2, {channels}, {resolution}, {resolution}] images to "
                            f"{shape}, expected logits (2, {num_classes}) for the dataset's "
                            f"{num_classes} classes")


def check_finite(model: nn.Module, images: torch.Tensor, who: str) -> None:
    """One eval-mode forward pass on the victim's real images: logits that are NaN or infinite
    are a broken model, not an attack to report as inconclusive."""
    if len(images) == 0 or not images.is_floating_point():
        return
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(images)
    finally:
        model.train(was_training)
    if isinstance(out, torch.Tensor) and out.is_floating_point() and not torch.isfinite(out).all():
        raise GradleakError(f"model {who} returns non-finite logits (NaN or inf) on the victim's "
                            "images; fix the model or its checkpoint (nothing was attacked)")


def channel_mismatch(net: nn.Module, channels: int, resolution: int, who: str) -> str:
    """The one line for a model whose first layer takes another channel count than the data
    has, or ``""``. Asked only once its forward pass failed, so a first-registered layer that
    is not the input layer can never refuse a model that works."""
    first = next(((n, m) for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))),
                 None)
    if first is None:
        return ""
    name, layer = first
    if isinstance(layer, nn.Conv2d):
        want = layer.in_channels
    else:  # an MLP on flattened images: in_features = C * R * R
        area = resolution * resolution
        want = layer.in_features // area if layer.in_features % area == 0 else channels
    if want == channels:
        return ""
    fix = f"set data.channels={want}" if want in (1, 3) else "data.channels gives 1 or 3 only"
    return (f"{who}: its first layer {name or type(layer).__name__} takes {want}-channel "
            f"images but the data has {channels} channels; {fix}")


def _stats(values: Sequence[float] | None, channels: int, key: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    out = tuple(float(v) for v in values)
    if len(out) == 1:
        out = out * channels
    if len(out) != channels:
        raise GradleakError(f"bad value {list(values)} for {key}: needs 1 or {channels} numbers "
                            f"(one per image channel)")
    if key.endswith("std") and min(out) <= 0:
        raise GradleakError(f"bad value {list(values)} for {key}: every std must be > 0")
    return out


def input_statistics(*, channels: int, dataset_mean: Sequence[float], dataset_std: Sequence[float],
                     normalize: bool, input_mean: Sequence[float] | None = None,
                     input_std: Sequence[float] | None = None) -> tuple[tuple[float, ...], ...]:
    """(mean, std) subtracted/divided in front of the network.

    ``normalize`` with no ``input_mean``/``input_std``: the dataset's statistics; with them: those
    (what the user's model was trained to expect); ``normalize=False``: the identity (0, 1).
    """
    mean = _stats(input_mean, channels, "model.input_mean")
    std = _stats(input_std, channels, "model.input_std")
    if not normalize:
        if mean is not None or std is not None:
            raise GradleakError("model.input_mean / model.input_std need model.normalize=true "
                                "(with normalize=false the model sees raw [0, 1] pixels)")
        return (0.0,) * channels, (1.0,) * channels
    return (mean or tuple(dataset_mean)), (std or tuple(dataset_std))


def prepare_user_model(module: nn.Module, *, mean: Sequence[float] | None = None,
                       std: Sequence[float] | None = None, normalize: bool = True,
                       num_classes: int | None = None, resolution: int | None = None,
                       channels: int | None = None) -> Classifier:
    """Wrap a user's ``nn.Module`` (logits from normalised images) into a :class:`Classifier`
    that takes images ``[B, C, H, W]`` in [0, 1], as attacks, clients and metrics expect.

    ``normalize=True`` puts ``(x - mean) / std`` in front (``mean``/``std``: the statistics the
    model expects, usually the dataset's); ``False`` feeds raw pixels. A module that already is a
    :class:`Classifier` is returned unchanged. With ``num_classes``, ``channels`` and
    ``resolution`` the output shape is checked by one forward pass.
    """
    if isinstance(module, Classifier):
        return module
    if not isinstance(module, nn.Module):
        raise GradleakError(f"model must be a torch.nn.Module, got {type(module).__name__}")
    if normalize:
        if mean is None or std is None:
            raise GradleakError("prepare_user_model(normalize=True) needs mean and std, one "
                                "number per channel (or normalize=False for raw [0, 1] pixels)")
        ch = channels or len(tuple(mean))
        m, s = _stats(mean, ch, "mean"), _stats(std, ch, "std")
    else:  # (1,1,1,1) buffers broadcast to any channel count
        ch = channels or 3
        m, s = (0.0,), (1.0,)
    if num_classes is not None and resolution is not None:
        check_output(module, num_classes=num_classes, channels=ch, resolution=resolution,
                     who=f"model {type(module).__name__}")
    return Classifier(module, mean=m, std=s)
