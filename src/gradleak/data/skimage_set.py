"""The offline default datasets, built from the photos shipped inside the scikit-image wheel.

``skimage``: 10 classes, one per colour photo. ``skimage_gray``: 12 classes, one per grey photo
(replicated to 3 channels); it holds the "semantic details" canaries ``clock``, ``text`` and
``page``. Only photos bundled in the wheel are used (no ``pooch`` download), so both build
with no network.

Layout of a split with ``P`` samples per class: indices ``c*P .. c*P + P - 1`` are class ``c``.
For ``split="train"`` (``P = 64``) sample ``c*P`` is the whole photo (centre square crop,
anti-aliased resize) and the other 63 are deterministic random-resized crops. For
``split="test"`` (``P = 16``) all samples are crops drawn with a different fixed seed, so the
test split never repeats a training image.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import torch
from skimage import data as skdata
from skimage.transform import resize

from gradleak.config import DataConfig
from gradleak.data import register_dataset
from gradleak.data.base import TensorImageDataset
from gradleak.errors import GradleakError

# name -> loader returning the raw array as scikit-image ships it. The class order is chosen so
# that the victim selection's seeded class order for seed 0 (the victim stream of
# gradleak.scenario.SeedStreams: randperm(10) = 2, 0, 4, 1, 5, ...) starts with the most
# recognisable photos: the default demo (seed 0, N = 1) shows the astronaut, then chelsea.
COLOUR_PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "chelsea": skdata.chelsea,
    "immunohistochemistry": skdata.immunohistochemistry,
    "astronaut": skdata.astronaut,
    "colorwheel": skdata.colorwheel,
    "motorcycle": lambda: skdata.stereo_motorcycle()[0],  # left view of the stereo pair
    "rocket": skdata.rocket,
    "logo": skdata.logo,
    "coffee": skdata.coffee,
    "retina": skdata.retina,
    "hubble_deep_field": skdata.hubble_deep_field,
}

GRAY_PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "camera": skdata.camera,
    "brick": skdata.brick,
    "grass": skdata.grass,
    "gravel": skdata.gravel,
    "coins": skdata.coins,
    "moon": skdata.moon,
    "page": skdata.page,
    "text": skdata.text,
    "clock": skdata.clock,
    "cell": skdata.cell,
    "horse": skdata.horse,
    "microaneurysms": skdata.microaneurysms,
}

PER_CLASS = {"train": 64, "test": 16}
# Fixed seeds: the crops are part of the dataset's definition, not of an experiment's seed.
_CROP_SEEDS = {"train": 20240, "test": 20241}
_MIN_SCALE, _MAX_SCALE = 0.35, 1.0

# (dataset name, resolution, split) -> (images [N, 3, R, R], labels [N]).
_CACHE: dict[tuple[str, int, str], tuple[torch.Tensor, torch.Tensor]] = {}


class PhotoCropDataset(TensorImageDataset):
    """In-memory photo/crop dataset; ``per_class`` consecutive samples per class.

    ``preferred_indices`` lists, per class, the sample a small victim batch should show first
    (the whole photo), or is ``None`` when the split has no whole photos. The sampler in
    :mod:`gradleak.data.sampling` honours it. ``class_is_source``: a class is one photo, so its
    other samples (crops) are the victim's own content, not data an attacker knows; the leak
    criterion's reference pool leaves them out.
    """

    class_is_source = True

    def __init__(self, name: str, images: torch.Tensor, labels: torch.Tensor,
                 classes: tuple[str, ...], *, per_class: int, whole_photos: bool) -> None:
        super().__init__(name, images, labels, classes)
        self.per_class = per_class
        self.preferred_indices: tuple[int, ...] | None = (
            tuple(c * per_class for c in range(len(classes))) if whole_photos else None
        )


def load_photo(name: str) -> np.ndarray:
    """The photo ``name`` (from either set) as float32 ``[H, W, 3]`` RGB in [0, 1]."""
    loader = COLOUR_PHOTOS.get(name) or GRAY_PHOTOS[name]
    return _to_rgb(loader())


def _to_rgb(img: np.ndarray) -> np.ndarray:
    if img.dtype == bool:
        img = img.astype(np.float32)
    elif np.issubdtype(img.dtype, np.integer):
        img = img.astype(np.float32) / 255.0
    else:
        img = img.astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        # Composite RGBA on white so transparent areas don't turn into arbitrary colours.
        alpha = img[:, :, 3:]
        img = img[:, :, :3] * alpha + (1.0 - alpha)
    return np.clip(img, 0.0, 1.0)


def center_square(img: np.ndarray) -> np.ndarray:
    """The largest centred square of ``img [H, W, ...]``."""
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return img[top:top + s, left:left + s]


def _resize(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    shape = (size, size) if isinstance(size, int) else size
    return resize(img, shape, anti_aliasing=True)


def _working_copy(img: np.ndarray, resolution: int) -> np.ndarray:
    """``img`` shrunk by an integer box filter so its short side stays >= 4 R.

    The Gaussian anti-aliasing of ``resize`` costs ~1 s on the 1411 px retina photo at 32 px;
    averaging k x k blocks first is cheap and keeps every crop (>= 0.35 of the short side, i.e.
    >= 1.4 R px) above the target resolution, so the final anti-aliased resize still sees detail.
    """
    k = min(img.shape[:2]) // (4 * resolution)
    if k < 2:
        return img
    h, w = (img.shape[0] // k) * k, (img.shape[1] // k) * k
    # Trim symmetrically so the centre square stays centred.
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    img = img[top:top + h, left:left + w]
    return img.reshape(h // k, k, w // k, k, 3).mean(axis=(1, 3))


def whole_photo(name: str, resolution: int) -> np.ndarray:
    """Sample 0 of a class: the photo's centre square, anti-aliased resize to ``[R, R, 3]``
    (after the integer pre-binning of :func:`_working_copy`; ~0.01 mean abs. difference)."""
    return _resize(center_square(_working_copy(load_photo(name), resolution)), resolution)


def _crops(img: np.ndarray, resolution: int, count: int,
           seed: tuple[int, int]) -> list[np.ndarray]:
    """``count`` random-resized crops of ``img`` (side 0.35-1.0 of the short side, random
    position and horizontal flip), each resized to ``[R, R, 3]``. ``img`` is a working copy."""
    rng = np.random.default_rng(seed)
    h, w = img.shape[:2]
    short = min(h, w)
    out = []
    for _ in range(count):
        # Geometry drawn as fractions so it does not depend on the resolution.
        scale, fy, fx, flip = rng.uniform(_MIN_SCALE, _MAX_SCALE), *rng.random(3)
        side = max(1, round(scale * short))
        top = int(fy * (h - side + 1))
        left = int(fx * (w - side + 1))
        crop = img[top:top + side, left:left + side]
        if flip < 0.5:
            crop = crop[:, ::-1]
        out.append(_resize(crop, resolution))
    return out


def _build(name: str, photos: dict[str, Callable[[], np.ndarray]],
           cfg: DataConfig) -> PhotoCropDataset:
    split, res = cfg.split, cfg.resolution
    if split not in PER_CLASS:
        raise GradleakError(f"bad data.split={split!r} for {name}; allowed: train, test")
    per_class = PER_CLASS[split]
    whole = split == "train"
    key = (name, res, split)
    if key not in _CACHE:
        samples: list[np.ndarray] = []
        labels: list[int] = []
        for c, photo in enumerate(photos):
            img = _working_copy(load_photo(photo), res)
            n_crops = per_class - 1 if whole else per_class
            if whole:
                samples.append(_resize(center_square(img), res))
            # Seeded by the photo's name: reordering or adding photos leaves each one's crops as is.
            seed = (_CROP_SEEDS[split], zlib.crc32(photo.encode()))
            samples += _crops(img, res, n_crops, seed=seed)
            labels += [c] * per_class
        images = torch.from_numpy(np.stack(samples).astype(np.float32)).permute(0, 3, 1, 2)
        _CACHE[key] = (images.contiguous().clamp_(0, 1), torch.tensor(labels, dtype=torch.long))
    images, labels_t = _CACHE[key]
    return PhotoCropDataset(name, images, labels_t, tuple(photos), per_class=per_class,
                            whole_photos=whole)


@register_dataset("skimage")
def load_skimage(cfg: DataConfig) -> PhotoCropDataset:
    """10 colour photos of scikit-image, ``[N, 3, R, R]`` (N = 640 train, 160 test)."""
    return _build("skimage", COLOUR_PHOTOS, cfg)


@register_dataset("skimage_gray")
def load_skimage_gray(cfg: DataConfig) -> PhotoCropDataset:
    """12 grey photos of scikit-image as 3-channel images (N = 768 train, 192 test)."""
    return _build("skimage_gray", GRAY_PHOTOS, cfg)
