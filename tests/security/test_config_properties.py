"""Property-based: whatever value any config key is given, the only failure is one GradleakError
line, and what is accepted is in range and JSON-safe (no NaN reaching result.json)."""

from __future__ import annotations

import dataclasses
import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradleak.config import Config, load_config, set_key, valid_keys
from gradleak.errors import GradleakError

KEYS = valid_keys()
NASTY = ["nan", "NaN", ".nan", "inf", "-inf", ".inf", "1e400", "-1e400", "-1", "0", "-0.0",
         "1.5", "2", "1e-320", "9" * 40, "[", "]", "[1,", "{a: 1", "{}", "[]", "[0]", "[-3]",
         "[1, nan]", "null", "~", "", " ", "true", "yes", "0x10", "1_000", "'", '"', "\x00",
         "!!python/object/apply:os.system ['true']", "&a [*a]", "a\nb", "../../x", "%s%n",
         "cuda:-1", "None", "1e5", "-1e5", "1.0e+3", "+3", "٣"]
VALUES = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.lists(st.one_of(st.integers(-5, 5), st.floats(), st.text(max_size=3)), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _field(key: str) -> dataclasses.Field:
    target: object = Config()
    *path, name = key.split(".")
    for part in path:
        target = getattr(target, part)
    return {f.name: f for f in dataclasses.fields(target)}[name]


def _value(cfg: Config, key: str) -> object:
    target: object = cfg
    for part in key.split("."):
        target = getattr(target, part)
    return target


def _one_line(exc: GradleakError) -> None:
    text = str(exc)
    assert text and "\n" not in text and "\r" not in text, repr(text)


@FAST
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_any_value_for_any_key_is_accepted_in_range_or_one_gradleak_error(key, value):
    cfg = Config()
    try:
        set_key(cfg, key, value)
    except GradleakError as exc:  # anything else (TypeError, YAMLError, ...) fails the test
        _one_line(exc)
        return
    got = _value(cfg, key)
    items = got if isinstance(got, list) else [got]
    meta = _field(key).metadata
    for item in items:
        if isinstance(item, float):
            assert math.isfinite(item), (key, value, got)
        if meta.get("minimum") is not None and isinstance(item, (int, float)):
            assert item >= meta["minimum"], (key, value, got)
    if meta.get("choices") and got is not None:
        assert got in meta["choices"]
    json.dumps(cfg.to_dict(), allow_nan=False)  # result.json can always be written


@FAST
@given(key=st.sampled_from(KEYS), text=st.one_of(st.sampled_from(NASTY), st.text(max_size=12)))
def test_command_line_overrides_resolve_or_fail_with_one_line(key, text):
    try:
        cfg = load_config(None, [f"{key}={text}"])
    except GradleakError as exc:
        _one_line(exc)
        return
    json.dumps(cfg.to_dict(), allow_nan=False)


NUMERIC_BAD = ["nan", "inf", "-inf", "1e400", "-1e400"]


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from([k for k in KEYS if "float" in str(_field(k).type)]),
       bad=st.sampled_from(NUMERIC_BAD))
def test_non_finite_numbers_are_refused_for_every_float_key(key, bad):
    try:
        set_key(Config(), key, bad)
    except GradleakError as exc:
        _one_line(exc)
        assert key in str(exc)
    else:
        raise AssertionError(f"{key}={bad} was accepted")


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from([k for k in KEYS if _field(k).metadata.get("minimum") is not None]),
       below=st.floats(min_value=1e-6, max_value=1e6))
def test_values_below_the_minimum_are_refused(key, below):
    minimum = _field(key).metadata["minimum"]
    tp = str(_field(key).type)
    value = minimum - below
    if "int" in tp and "float" not in tp:
        value = math.floor(value) if value != math.floor(value) else value - 1
        value = int(value)
    text = f"[{value}]" if "list" in tp else str(value)
    try:
        set_key(Config(), key, text)
    except GradleakError as exc:
        _one_line(exc)
        assert key in str(exc)
    else:
        raise AssertionError(f"{key}={text} below the minimum {minimum} was accepted")
