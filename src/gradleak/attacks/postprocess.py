"""ROG's post-processing networks: a registry of architectures built by gradleak's own code.

A post-processing file (``attack.postprocess=FILE``) is data only: a ``torch.save``d dict
``{"arch": NAME, "kwargs": {...}, "state_dict": {...}}`` read with ``torch.load(weights_only=True)``.
``NAME`` must be an entry of :data:`POSTPROCESS`; ``kwargs`` may hold only numbers, strings and
booleans. The file can therefore choose weights and registered sizes, never code: no import, no
class path, no TorchScript or ``torch.export`` program (both carry executable graphs). A user's
own architecture enters through code the user runs (``register_postprocess`` in a ``--plugin``
module, or an ``nn.Module`` passed to ``ROG(postprocess=...)``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradleak.errors import GradleakError
from gradleak.io import atomic_write, load_weights
from gradleak.models import check_state_dict
from gradleak.registry import Registry

POSTPROCESS: Registry = Registry("post-processing architecture")


def register_postprocess(name: str):
    """Decorator: ``builder(**kwargs) -> nn.Module`` mapping ``[N, C, H, W]`` to the same shape."""
    return POSTPROCESS.register(name)


@register_postprocess("residual_cnn")
class ResidualCNN(nn.Module):
    """DnCNN-style denoiser (Zhang et al., TIP 2017): ``x + f(x)``, ``f`` = ``depth`` 3x3 convs."""

    def __init__(self, channels: int = 3, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("width", width), ("depth", depth)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4096:
                raise GradleakError(f"residual_cnn {name}={value!r}: expected an int in [1, 4096]")
        layers: list[nn.Module] = []
        c_in = channels
        for i in range(depth):
            c_out = channels if i == depth - 1 else width
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
            if i < depth - 1:
                layers.append(nn.ReLU())
            c_in = c_out
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def save_postprocess(path: str | Path, arch: str, net: nn.Module, **kwargs: Any) -> None:
    """Write ``net`` (built by ``POSTPROCESS.get(arch)(**kwargs)``) in the loadable format."""
    POSTPROCESS.get(arch)
    blob = {"arch": arch, "kwargs": dict(kwargs),
            "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
    atomic_write(path, lambda p: torch.save(blob, p))


def _program_kind(path: Path) -> str | None:
    """``torch.export`` / TorchScript archives are recognised only to refuse them clearly."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if any(n.endswith("/archive_format") for n in names):
        return "a torch.export program"
    if any(n.endswith("/constants.pkl") or n.endswith("/code/") or "/code/" in n for n in names):
        return "a TorchScript module"
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def load_postprocess(path: str | Path, *, map_location: str | torch.device = "cpu") -> nn.Module:
    """The post-processing network stored at ``path`` (format in the module docstring), eval mode."""
    p = Path(path)
    where = f"attack.postprocess {str(p)!r}"
    if not p.is_file():
        raise GradleakError(f"{where} does not exist")
    program = _program_kind(p)
    if program:
        raise GradleakError(f"{where} is {program}, which carries code and is never loaded from a "
                            "file; save {'arch', 'kwargs', 'state_dict'} of a registered "
                            f"architecture ({', '.join(POSTPROCESS.names())}, or yours via "
                            "register_postprocess in a --plugin)")
    blob = load_weights(p, where)
    if not (isinstance(blob, dict) and isinstance(blob.get("arch"), str)
            and isinstance(blob.get("state_dict"), dict)
            and isinstance(blob.get("kwargs", {}), dict)):
        raise GradleakError(f"{where} must be a dict with 'arch' (one of "
                            f"{', '.join(POSTPROCESS.names())}), 'state_dict' and optional 'kwargs'")
    kwargs = blob.get("kwargs", {})
    bad = [k for k, v in kwargs.items()
           if not isinstance(k, str) or not isinstance(v, (bool, int, float, str))]
    if bad:
        raise GradleakError(f"{where}: kwargs {bad} are not plain numbers, strings or booleans")
    builder = POSTPROCESS.get(blob["arch"])  # unknown name -> one line listing the allowed ones
    try:
        net = builder(**kwargs)
    except GradleakError:
        raise
    except (TypeError, ValueError) as exc:
        raise GradleakError(f"{where}: cannot build {blob['arch']!r} with {kwargs}: "
                            f"{_first_line(exc)}") from None
    check_state_dict(net, blob["state_dict"], where)
    net.load_state_dict(blob["state_dict"])
    return net.to(map_location).eval()
