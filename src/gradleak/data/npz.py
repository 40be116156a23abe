"""The user's own arrays: ``data.dataset=npz``, ``data.root=FILE.npz`` with ``x`` and ``y``.

``x`` holds images as ``[N, H, W]``, ``[N, H, W, C]`` (NHWC) or ``[N, C, H, W]`` (NCHW) with
C in {1, 3}, either integers in 0..255 (uint8) or floats in [0, 1]; ``y`` holds N integer labels
(or one-hot rows). Optional arrays: ``classes`` (names) and ``x_test``/``y_test`` (the test
split). Without a test split, ``data.test_root`` (another .npz) or a held-out part
(``data.holdout``) is used. Read with ``allow_pickle=False``: a data file never runs code.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from gradleak.config import DataConfig
from gradleak.data import register_dataset
from gradleak.data.base import ImageDataset, convert_channels
from gradleak.data.cifar import resize_batch
from gradleak.data.holdout import holdout_indices, holdout_note
from gradleak.errors import GradleakError

_EXPECTED = ("expected arrays x (images [N,H,W,C], [N,C,H,W] or [N,H,W]; uint8 0-255 or "
             "float 0-1) and y (N integer labels)")
_STAT_SAMPLES = 4096  # images used to estimate the per-channel mean/std
# Label bounds: a label is a class index, and one stray huge label would build a model with that
# many outputs. Beyond MAX_UNNAMED classes the file must name them in its ``classes`` array.
MAX_LABEL = 65_535
MAX_UNNAMED = 10_000


def _to_nchw(x: np.ndarray, where: str) -> tuple[np.ndarray, str]:
    """``x`` as ``[N, C, H, W]`` and the layout it was read as."""
    if x.ndim == 3:
        return x[:, None], "NHW (grey)"
    if x.ndim != 4:
        raise GradleakError(f"{where}: x has shape {x.shape}; {_EXPECTED}")
    last, second = x.shape[3], x.shape[1]
    # Channels last wins when both axes could be channels ([N, 3, H, 3] is not a real image).
    if last in (1, 3):
        return x.transpose(0, 3, 1, 2), "NHWC"
    if second in (1, 3):
        return x, "NCHW"
    raise GradleakError(f"{where}: x has shape {x.shape}: neither axis 1 nor axis 3 has 1 or "
                        f"3 channels; {_EXPECTED}")


def _check_pixels(x: np.ndarray, where: str) -> str:
    """'uint8' for 0..255 integers, 'unit' for floats in [0, 1]; anything else is refused."""
    if x.size == 0:
        raise GradleakError(f"{where}: x holds no images")
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise GradleakError(f"{where}: x holds integers in [{lo}, {hi}]; expected 0..255")
        return "uint8"
    if np.issubdtype(x.dtype, np.floating):
        lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
        if np.isnan(x).any() or lo < 0.0 or hi > 1.0:
            raise GradleakError(f"{where}: x holds floats in [{lo:g}, {hi:g}] (or NaN); expected "
                                "[0, 1] (scale 0-255 floats by 1/255 or store uint8)")
        return "unit"
    raise GradleakError(f"{where}: x has dtype {x.dtype}; {_EXPECTED}")


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[0] == n and y.shape[1] > 1:  # one-hot or scores: the argmax
        y = y.argmax(axis=1)
    y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1 or y.shape[0] != n:
        raise GradleakError(f"{where}: y has shape {y.shape} but x has {n} images; {_EXPECTED}")
    if not (np.issubdtype(y.dtype, np.integer) or
            (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0))):
        raise GradleakError(f"{where}: y must hold integer class labels, got dtype {y.dtype}")
    if n and y.min() < 0:
        raise GradleakError(f"{where}: y holds negative label {int(y.min())}; labels are 0..K-1")
    if n and int(y.max()) >= MAX_LABEL:  # checked before the cast: a uint64 would wrap negative
        raise GradleakError(f"{where}: y holds label {int(y.max())}; labels are class indices "
                            f"0..{MAX_LABEL - 1}")
    return y.astype(np.int64)


class NpzDataset(ImageDataset):
    """In-memory arrays ``[N, C, S, S]`` (uint8 or float), converted and resized per item."""

    def __init__(self, x: np.ndarray, y: np.ndarray, *, scale: str, classes: tuple[str, ...],
                 resolution: int, mean: tuple[float, ...], std: tuple[float, ...],
                 transform_note: str, split_note: str, channels: int) -> None:
        self.name = "npz"
        self._x, self._y, self._scale = x, y, scale
        self.classes = classes
        self.channels = channels  # data.channels, else as stored; converted per item
        self.resolution = resolution
        self.mean, self.std = mean, std
        self.transform_note, self.split_note = transform_note, split_note

    def __len__(self) -> int:
        return len(self._y)

    def _convert(self, items: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(items)).float()
        if self._scale == "uint8":
            t = t.div_(255.0)
        return resize_batch(convert_channels(t, self.channels), self.resolution)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for npz ({len(self)} samples)")
        i = index % len(self)
        return self._convert(self._x[i:i + 1])[0], int(self._y[i])

    def targets(self) -> list[int]:
        return self._y.tolist()


def _member(f: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    value = f[key]
    if not isinstance(value, np.ndarray):  # numpy hands back the raw bytes of a non-.npy member
        raise GradleakError(f"cannot read {path}: member {key!r} is not a .npy array (no .npy "
                            "header); save the file with numpy.savez(FILE, x=..., y=...)")
    return value


def _read(path: Path, xkey: str, ykey: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    (x, y), found = _arrays(path, (xkey, ykey))
    return x, y, found


def _arrays(path: Path, keys: tuple[str, ...]) -> tuple[list[np.ndarray], list[str]]:
    """The arrays ``keys`` of ``path`` and every member name; one line for anything else."""
    if not zipfile.is_zipfile(path):  # np.load would otherwise try .npy or pickle
        raise GradleakError(f"cannot read {path} as .npz: not a zip archive (save it with "
                            "numpy.savez(FILE, x=..., y=...))")
    try:
        with np.load(path, allow_pickle=False) as f:
            found = list(f.files)
            for key in keys:
                if key not in found:
                    raise GradleakError(f"{path} has no {key!r} array (found: "
                                        f"{', '.join(found) or 'none'}); {_EXPECTED}")
            return [_member(f, key, path) for key in keys], found
    except GradleakError:
        raise
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise GradleakError(f"cannot read {path}: {str(exc).splitlines()[0]} (object arrays are "
                            "not loaded; store numeric arrays and classes as a str array)") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise GradleakError(f"cannot read {path} as .npz: {exc}") from None


def _classes(path: Path, found: list[str], y: np.ndarray) -> tuple[str, ...]:
    k = int(y.max()) + 1 if len(y) else 0
    if "classes" not in found:
        if k > MAX_UNNAMED:
            raise GradleakError(f"{path}: y holds label {k - 1}, i.e. {k} classes; beyond "
                                f"{MAX_UNNAMED} classes name them in a 'classes' array")
        return tuple(str(i) for i in range(k))
    (names_array,), _ = _arrays(path, ("classes",))  # the same checks: no pickle, a real array
    names = tuple(str(c) for c in names_array.reshape(-1).tolist())
    if len(names) < k:
        raise GradleakError(f"{path}: 'classes' names {len(names)} classes but y has label {k - 1}")
    return names


def _square(x: np.ndarray) -> tuple[np.ndarray, str]:
    h, w = x.shape[2], x.shape[3]
    if h == w:
        return x, ""
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[:, :, top:top + s, left:left + s], f"centre-cropped from {h}x{w} to {s}x{s}"


def _stats(x: np.ndarray, scale: str,
           channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    step = max(1, len(x) // _STAT_SAMPLES)
    sample = torch.from_numpy(np.ascontiguousarray(x[::step])).double()
    if scale == "uint8":
        sample = sample / 255.0
    sample = convert_channels(sample, channels)  # the statistics of the images the model sees
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())


@register_dataset("npz")
def load_npz(cfg: DataConfig) -> NpzDataset:
    """Your own arrays: data.root=FILE.npz with x (NHWC/NCHW, uint8 or [0, 1] floats) and y."""
    if not cfg.root:
        raise GradleakError(f"dataset npz needs data.root=FILE.npz; {_EXPECTED}")
    path = Path(cfg.root).expanduser()
    if not path.is_file():
        raise GradleakError(f"data.root {str(path)!r} is not a file; dataset npz needs "
                            f"data.root=FILE.npz with {_EXPECTED}")
    x, y, found = _read(path, "x", "y")
    x, layout = _to_nchw(x, str(path))
    scale = _check_pixels(x, str(path))
    y = _labels(y, x.shape[0], str(path))
    classes = _classes(path, found, y)
    x, crop = _square(x)
    channels = cfg.channels or x.shape[1]  # the test arrays are given the same channels
    mean, std = _stats(x, scale, channels)  # always of the training arrays
    test_source = None
    if cfg.test_root:
        test_source = Path(cfg.test_root).expanduser()
        if not test_source.is_file():
            raise GradleakError(f"data.test_root {str(test_source)!r} is not a file (dataset npz "
                                "takes another .npz with x and y)")
    note = f"{'all' if cfg.split == 'train' else 'test split:'} {len(y)} images of {path}"
    if cfg.split == "test" and (test_source is not None or "x_test" in found):
        src = test_source or path
        xk, yk = ("x", "y") if test_source is not None else ("x_test", "y_test")
        x, y, _ = _read(src, xk, yk)
        x, layout = _to_nchw(x, f"{src}:{xk}")
        scale = _check_pixels(x, f"{src}:{xk}")
        y = _labels(y, x.shape[0], f"{src}:{yk}")
        x, crop = _square(x)
        if len(y) and y.max() >= len(classes):
            raise GradleakError(f"{src}: test label {int(y.max())} is not a training class "
                                f"(0..{len(classes) - 1})")
        note = f"test split: all {len(y)} images of {src} ({xk}/{yk})"
    elif test_source is None and "x_test" not in found:
        keep = holdout_indices(y.tolist(), cfg.holdout, cfg.split)
        if not keep:
            raise GradleakError(f"{path} has no x_test/y_test and data.holdout={cfg.holdout} holds "
                                "out no images; set data.test_root or data.holdout > 0")
        if cfg.holdout > 0:
            note = holdout_note(cfg.holdout, str(path), cfg.split, len(keep))
        x, y = x[keep], y[keep]
    side = x.shape[-1]
    steps = [f"read as {layout}"]
    if crop:
        steps.append(crop)
    if side != cfg.resolution:
        steps.append(f"resized from {side}x{side} to {cfg.resolution}x{cfg.resolution} px "
                     "(bilinear, anti-aliased)")
    steps.append("pixels uint8 / 255" if scale == "uint8" else "pixels: floats in [0, 1] as stored")
    if x.shape[1] != channels:
        steps.append("grey repeated to 3 channels" if channels == 3 else
                     "RGB converted to luminance (PIL L weights)")
    steps.append("mean/std estimated from the training images")
    return NpzDataset(x, y, scale=scale, classes=classes, resolution=cfg.resolution, mean=mean,
                      std=std, transform_note="; ".join(steps), split_note=note, channels=channels)
