"""Atomic file output: a reader never sees a half-written file."""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; outputs are meant to be shared
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def finite_or_null(data: Any) -> Any:
    """``data`` with every NaN/inf float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_or_null(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_or_null(v) for v in data]
    return data


def write_json(path: str | Path, data: Any) -> None:
    """Strict JSON: a non-finite number is written as null instead of losing the whole file."""
    write_text(path, json.dumps(finite_or_null(data), indent=2, sort_keys=False,
                                allow_nan=False) + "\n")


def load_weights(path: str | Path, where: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; any failure is one GradleakError.

    ``weights_only`` restricts unpickling to tensors and plain containers, so a file can never
    import or call anything (torch >= 2.4 raises on anything else)."""
    import pickle

    import torch

    from gradleak.errors import GradleakError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes on foreign files
            return torch.load(Path(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        refused = [ln for ln in lines if "GLOBAL" in ln]
        if refused:
            raise GradleakError(f"{where} refers to code or classes ({refused[0].rstrip('.')}), "
                                "which gradleak never loads; it must hold only tensors") from None
        detail = next((ln for ln in lines if ln.startswith("Unsupported")), lines[0] if lines else "")
        raise GradleakError(f"{where} is not a torch weights file ({detail})") from None
    except Exception as exc:  # empty, truncated, random bytes, not a file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GradleakError(f"{where} is not a torch weights file: {first}") from None
