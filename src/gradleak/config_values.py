"""Reading and checking config values: type coercion, per-key ranges and cross-key rules.

Kept apart from :mod:`gradleak.config` (the dataclass tree) so the rules read as one table. Every
failure is a one-line :class:`GradleakError` naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any

import yaml

from gradleak.errors import GradleakError


def option(default: Any, *, choices: tuple | None = None, minimum: float | None = None,
           help: str = "", added: bool = False) -> Any:
    """A config field with its default, allowed ``choices``, ``minimum`` and one-line ``help``.
    ``added``: a key added after stores existed; at its default it is left out of the config
    digest, so stores recorded before it keep resuming (:meth:`gradleak.config.Config.digest`)."""
    meta = {"choices": choices, "minimum": minimum, "help": help, "added": added}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe(tp: Any) -> str:
    """``int | None`` -> ``"int or null"`` (for error messages)."""
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {describe(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def parse_text(value: str) -> Any:
    """A command-line string read as a YAML scalar or list; text that is not YAML stays text."""
    if not value.strip():
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` as ``tp`` or raise TypeError (numbers must be finite)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return coerce(value, arg)
            except TypeError:
                continue
        raise TypeError
    if tp is type(None):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
            return None
        raise TypeError
    if origin is list:
        if isinstance(value, str):
            value = parse_text(value)
        if not isinstance(value, (list, tuple)):
            raise TypeError
        (inner,) = typing.get_args(tp)
        return [coerce(v, inner) for v in value]
    return _scalar(value, tp)


def _scalar(value: Any, tp: Any) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise TypeError
    if tp in (int, float) and isinstance(value, bool):
        raise TypeError
    if tp is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            value = value.strip()
            if not re.fullmatch(r"[+-]?\d+", value):
                raise TypeError
            return int(value)
        if isinstance(value, int):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise TypeError from None
        if isinstance(value, (int, float)):
            try:
                out = float(value)
            except OverflowError:
                raise TypeError from None
            if not math.isfinite(out):
                raise TypeError  # nan / inf / 1e400 would only fail after the whole run
            return out
        raise TypeError
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError
    raise TypeError


# --- per-key rules beyond the field's type, choices and minimum ------------------------------
# key -> (test of one value, what is allowed). Lists are checked item by item.
Rule = tuple[Callable[[Any], bool], str]
INT_MAX = 2**31 - 1
RULES: dict[str, Rule] = {
    "seed": (lambda v: v <= INT_MAX, f"an integer in [0, {INT_MAX}]"),
    "device": (lambda v: re.fullmatch(r"(cpu|cuda|mps|xpu)(:\d+)?", v) is not None,
               "cpu, cuda, cuda:N or mps"),
    "data.resolution": (lambda v: v <= 4096, "an integer in [4, 4096]"),
    "data.num_samples": (lambda v: v <= 100_000, "an integer in [1, 100000]"),
    "data.indices": (lambda v: 0 <= v <= INT_MAX, "non-negative sample indices"),
    "data.holdout": (lambda v: 0.0 <= v < 1.0, "a share in [0, 1) (0: hold out nothing)"),
    "model.dropout": (lambda v: 0.0 <= v < 1.0, "a probability in [0, 1)"),
    "model.hidden": (lambda v: 1 <= v <= 1_000_000, "widths in [1, 1000000]"),
    "model.width": (lambda v: v <= 65_536, "an integer in [1, 65536]"),
    "model.depth": (lambda v: v <= 1_000, "an integer in [1, 1000]"),
    "client.lr": (lambda v: v > 0, "a finite number > 0"),
    "attack.lr": (lambda v: v > 0, "a finite number > 0"),
    "attack.generator_lr": (lambda v: v > 0, "a finite number > 0"),
    "attack.race_keep": (lambda v: 0.0 < v <= 1.0, "a fraction in (0, 1]"),
    "defense.sparsity": (lambda v: 0.0 <= v <= 1.0, "a fraction in [0, 1]"),
    "defense.bits": (lambda v: v <= 32, "an integer in [1, 32]"),
    "metrics.psnr_threshold": (lambda v: 0.0 <= v <= 200.0, "a PSNR in [0, 200] dB"),
    "metrics.lpips_threshold": (lambda v: 0.0 <= v <= 2.0, "an LPIPS distance in [0, 2]"),
    "fl.fraction": (lambda v: 0.0 < v <= 1.0, "a share in (0, 1]"),
    "fl.alpha": (lambda v: v > 0, "a finite number > 0"),
    "fl.dp_delta": (lambda v: 0.0 < v < 1.0, "a probability in (0, 1)"),
    "fl.dp_max_grad_norm": (lambda v: v > 0, "a finite number > 0"),
    "defense.dp_delta": (lambda v: 0.0 < v < 1.0, "a probability in (0, 1)"),
    "defense.dp_max_grad_norm": (lambda v: v > 0, "a finite number > 0"),
}
# Keys naming a file or folder: the empty string is a mistake, not "unset" (that is null).
PATH_KEYS = ("data.root", "data.test_root", "model.checkpoint", "attack.generator",
             "attack.postprocess")


def check_value(key: str, raw: Any, value: Any, *, choices: tuple | None,
                minimum: float | None) -> None:
    """Raise GradleakError unless the coerced ``value`` of ``key`` is allowed."""
    if value is None:
        return
    if choices and value not in choices:
        raise GradleakError(f"bad value {raw!r} for {key}; allowed: {', '.join(map(str, choices))}")
    items = value if isinstance(value, list) else [value]
    if minimum is not None and any(v < minimum for v in items):
        raise GradleakError(f"bad value {raw!r} for {key}: must be >= {minimum}")
    rule = RULES.get(key)
    if rule is not None and not all(rule[0](v) for v in items):
        raise GradleakError(f"bad value {raw!r} for {key}: expected {rule[1]}")
    if key in PATH_KEYS and not str(value).strip():
        raise GradleakError(f"bad value {raw!r} for {key}: empty path; use null for none")
    if key == "data.indices" and len(set(value)) != len(value):
        repeated = sorted({v for v in value if value.count(v) > 1})
        raise GradleakError(f"bad value {raw!r} for data.indices: repeats {repeated}; the "
                            "victim's samples must be distinct")


def check_config(cfg: Any) -> None:
    """Rules across keys, checked once the whole config is resolved (before any work)."""
    m, d, fl = cfg.model, cfg.data, cfg.fl
    if m.kernel_size > d.resolution + 2 * m.padding:
        raise GradleakError(f"model.kernel_size={m.kernel_size} is larger than the padded image "
                            f"(data.resolution={d.resolution} + 2 * model.padding={m.padding})")
    if fl.attack_round is not None and fl.attack_round > fl.rounds:
        raise GradleakError(f"fl.attack_round={fl.attack_round} is after the last round "
                            f"(fl.rounds={fl.rounds}); use 1..{fl.rounds} or null")
    if d.indices is not None and len(d.indices) != d.num_samples:
        raise GradleakError(f"data.indices has {len(d.indices)} entries but data.num_samples="
                            f"{d.num_samples}; give exactly num_samples indices")
    if d.resolution % cfg.attack.rog_scale and cfg.attack.name == "rog":
        raise GradleakError(f"attack.rog_scale={cfg.attack.rog_scale} must divide data.resolution="
                            f"{d.resolution}")


def flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` -> ``[("a.b", 1)]`` (dotted keys, depth first)."""
    out = []
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


def unflatten(items: dict[str, Any] | list[tuple[str, Any]]) -> dict[str, Any]:
    """``{"a.b": 1}`` (or ``[("a.b", 1)]``) -> ``{"a": {"b": 1}}``; later items win."""
    tree: dict[str, Any] = {}
    for key, value in (items.items() if isinstance(items, dict) else items):
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise GradleakError(f"bad config key {key!r}: {part!r} is not a section")
        node[last] = value
    return tree


def parse_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise GradleakError(f"bad override {item!r}: expected key=value, e.g. attack.iterations=500")
    key, value = item.split("=", 1)
    return key.strip(), value


def data_overrides(command: str, overrides: list[str]) -> list[tuple[str, str]]:
    """``(key, value)`` of each ``data.*`` override of a command that reads only the dataset
    keys (``train-generator``, ``train-lm``); one line for any other key."""
    parsed = [parse_override(item) for item in overrides]
    for key, _ in parsed:
        if not key.startswith("data."):
            raise GradleakError(f"{command} reads only data.* keys, got {key!r}; use the "
                                "--steps/--batch-size/... options for training settings")
    return parsed


def drop_added_defaults(section: Any, tree: dict[str, Any]) -> None:
    """Keys marked ``added`` that hold their default leave the digest (see ``option``)."""
    for f in dataclasses.fields(section):
        if f.metadata.get("added") and tree.get(f.name) == _default(f):
            tree.pop(f.name, None)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None
