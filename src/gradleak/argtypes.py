"""argparse ``type=`` helpers: numbers checked when parsed, so a bad option is one line."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be an integer {allowed}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def finite_float(low: float | None = None, *, exclusive: bool = False,
                 high: float | None = None) -> Callable[[str], float]:
    """A finite float above ``low`` (strictly if ``exclusive``) and at most ``high``."""

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = low is not None and (value <= low if exclusive else value < low)
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            bounds = []
            if low is not None:
                bounds.append(f"{'>' if exclusive else '>='} {low}")
            if high is not None:
                bounds.append(f"<= {high}")
            raise argparse.ArgumentTypeError(
                f"must be a finite number{' ' + ' and '.join(bounds) if bounds else ''}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse
