"""Data loaders and victim sampling; no network, tiny synthetic files for the file formats."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from skimage.transform import resize

from gradleak.config import DataConfig
from gradleak.data import (
    DATASETS,
    TensorImageDataset,
    build_dataset,
    cifar,
    fashion_mnist,
    skimage_set,
)
from gradleak.data.sampling import select_victim_samples
from gradleak.errors import GradleakError

RES = 32


@pytest.fixture(scope="module")
def sk() -> skimage_set.PhotoCropDataset:
    return build_dataset(DataConfig(dataset="skimage", resolution=RES))


# --- skimage -------------------------------------------------------------------------------


def test_registry_names():
    for name in ("skimage", "skimage_gray", "cifar10", "cifar100", "imagefolder", "fashion_mnist"):
        assert name in DATASETS


def test_skimage_shapes_range_labels(sk):
    per_class = skimage_set.PER_CLASS["train"]
    assert per_class == 64
    assert sk.name == "skimage"
    assert len(sk.classes) == 10 and sk.num_classes == 10
    assert set(sk.classes) == set(skimage_set.COLOUR_PHOTOS)
    assert sk.images.shape == (10 * per_class, 3, RES, RES)
    assert sk.images.dtype == torch.float32
    assert sk.images.min() >= 0.0 and sk.images.max() <= 1.0
    assert sk.channels == 3 and sk.resolution == RES
    assert torch.equal(torch.bincount(sk.labels), torch.full((10,), per_class))
    assert sk.targets() == [i // per_class for i in range(len(sk))]
    img, label = sk[3 * per_class + 5]
    assert img.shape == (3, RES, RES) and label == 3
    assert len(sk.mean) == 3 and len(sk.std) == 3


def test_skimage_index_c_per_class_is_whole_photo(sk):
    per_class = sk.per_class
    assert sk.preferred_indices == tuple(c * per_class for c in range(10))
    for c, name in enumerate(sk.classes):
        expected = torch.from_numpy(skimage_set.whole_photo(name, RES)).permute(2, 0, 1)
        assert torch.allclose(sk.images[c * per_class], expected.float(), atol=1e-6), name
        # ... and it is (up to the cheap pre-binning) the plain anti-aliased resize of the
        # photo's centre square.
        direct = resize(skimage_set.center_square(skimage_set.load_photo(name)), (RES, RES),
                        anti_aliasing=True)
        assert np.abs(skimage_set.whole_photo(name, RES) - direct).mean() < 0.03, name
        # The crops are different images.
        assert not torch.allclose(sk.images[c * per_class + 1], sk.images[c * per_class])


def test_skimage_logo_is_rgb_on_white():
    logo = skimage_set.load_photo("logo")
    assert logo.shape[2] == 3
    assert np.allclose(logo[0, 0], 1.0)  # transparent corner composited on white


def test_skimage_deterministic_and_cached():
    cfg = DataConfig(dataset="skimage", resolution=12)
    a = build_dataset(cfg)
    b = build_dataset(cfg)
    assert torch.equal(a.images, b.images)
    skimage_set._CACHE.pop(("skimage", 12, "train"))
    c = build_dataset(cfg)  # rebuilt from scratch
    assert torch.equal(a.images, c.images) and torch.equal(a.labels, c.labels)


def test_skimage_test_split_is_other_crops(sk):
    test = build_dataset(DataConfig(dataset="skimage", resolution=RES, split="test"))
    assert test.images.shape == (10 * 16, 3, RES, RES)
    assert test.per_class == 16 and test.preferred_indices is None
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 16))
    assert test.classes == sk.classes
    # No test image is a training image.
    dist = torch.cdist(test.images.flatten(1), sk.images.flatten(1))
    assert dist.min() > 1e-3


def test_skimage_gray_has_canaries():
    gray = build_dataset(DataConfig(dataset="skimage_gray", resolution=16))
    for canary in ("clock", "text", "page"):
        assert canary in gray.classes
    assert gray.images.shape == (len(gray.classes) * 64, 3, 16, 16)
    assert torch.equal(gray.images[:, 0], gray.images[:, 1])
    assert torch.equal(gray.images[:, 0], gray.images[:, 2])
    c = gray.classes.index("clock")
    expected = torch.from_numpy(skimage_set.whole_photo("clock", 16)).permute(2, 0, 1)
    assert torch.allclose(gray.images[c * 64], expected.float(), atol=1e-6)


# --- Fashion-MNIST -------------------------------------------------------------------------


def _write_idx(path: Path, arr: np.ndarray, magic: int, *, gz: bool = True) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    blob = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if gz else blob)


def _fake_fmnist(root: Path, n: int = 5, *, gz: bool = True, split: str = "train"):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    _write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, 2051, gz=gz)
    _write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, 2049, gz=gz)
    return images, labels


def test_fashion_mnist_parses_idx_gz(tmp_path):
    images, labels = _fake_fmnist(tmp_path)
    ds = build_dataset(DataConfig(dataset="fashion_mnist", root=str(tmp_path), resolution=28))
    assert len(ds) == 5 and ds.channels == 1 and ds.num_classes == 10
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert ds.targets() == labels.tolist()
    img, label = ds[3]
    assert img.shape == (1, 28, 28) and label == 3
    assert torch.allclose(img[0], torch.from_numpy(images[3]).float() / 255)


def test_fashion_mnist_resize_and_plain_files(tmp_path):
    _fake_fmnist(tmp_path, n=4, gz=False, split="test")
    ds = build_dataset(DataConfig(dataset="fashion_mnist", root=str(tmp_path), resolution=16,
                                  split="test"))
    img, _ = ds[0]
    assert img.shape == (1, 16, 16) and img.min() >= 0 and img.max() <= 1
    assert len(ds) == 4


def test_fashion_mnist_corrupt_magic(tmp_path):
    _fake_fmnist(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    _write_idx(bad, np.zeros((5, 28, 28), np.uint8), 1234)
    with pytest.raises(GradleakError, match="magic 1234") as err:
        build_dataset(DataConfig(dataset="fashion_mnist", root=str(tmp_path)))
    assert str(bad) in str(err.value)


def test_fashion_mnist_truncated(tmp_path):
    _fake_fmnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    path.write_bytes((2051).to_bytes(4, "big") + b"".join(
        d.to_bytes(4, "big") for d in (5, 28, 28)) + b"\0" * 100)
    with pytest.raises(GradleakError, match="replace the file"):
        build_dataset(DataConfig(dataset="fashion_mnist", root=str(tmp_path)))


def test_fashion_mnist_missing_root(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(GradleakError, match="dataset-fashion-mnist") as err:
        build_dataset(DataConfig(dataset="fashion_mnist", root=str(root)))
    assert str(root) in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(not fashion_mnist.DEFAULT_ROOT.is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_real_files():
    ds = build_dataset(DataConfig(dataset="fashion_mnist", split="test", resolution=32))
    assert len(ds) == 10_000
    assert torch.equal(torch.bincount(torch.tensor(ds.targets())), torch.full((10,), 1000))
    img, label = ds[0]
    assert img.shape == (1, 32, 32) and label == 9  # the first test image is an ankle boot


# --- CIFAR ---------------------------------------------------------------------------------


@pytest.fixture
def no_download(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", fail)
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", fail)


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"),
                                         ("cifar100", "cifar-100-python")])
def test_cifar_missing_files(tmp_path, no_download, name, folder):
    with pytest.raises(GradleakError, match="data.download=true") as err:
        build_dataset(DataConfig(dataset=name, root=str(tmp_path), download=False))
    msg = str(err.value)
    assert str(tmp_path) in msg and folder in msg and "\n" not in msg


def test_cifar_corrupt_folder(tmp_path, no_download):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"junk")
    with pytest.raises(GradleakError, match="missing or corrupt") as err:
        build_dataset(DataConfig(dataset="cifar10", root=str(tmp_path)))
    assert str(tmp_path) in str(err.value)


def test_cifar_wrapper_is_lazy_and_resizes():
    data = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    ds = cifar.CifarDataset("cifar10", data, [0, 1, 2, 3, 4, 5], tuple("abcdefghij"), 16,
                            cifar.CIFAR10_MEAN, cifar.CIFAR10_STD)
    assert len(ds) == 6 and ds.targets() == [0, 1, 2, 3, 4, 5]
    img, label = ds[2]
    assert img.shape == (3, 16, 16) and label == 2 and img.min() >= 0 and img.max() <= 1
    full = cifar.CifarDataset("cifar10", data, [0] * 6, tuple("abcdefghij"), 32,
                              cifar.CIFAR10_MEAN, cifar.CIFAR10_STD)
    assert torch.equal(full[1][0], torch.from_numpy(data[1]).permute(2, 0, 1).float() / 255)
    # The mean of a 2x2 block survives the anti-aliased downsampling.
    assert torch.allclose(img.mean(), full[2][0].mean(), atol=1e-3)
    with pytest.raises(IndexError):
        ds[6]


# --- imagefolder ---------------------------------------------------------------------------


def _png(path: Path, colour: tuple[int, int, int], size=(30, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_imagefolder_with_split(tmp_path):
    _png(tmp_path / "train" / "cat" / "a.png", (255, 0, 0))
    _png(tmp_path / "train" / "cat" / "b.png", (200, 0, 0), size=(20, 40))
    _png(tmp_path / "train" / "dog" / "c.png", (0, 0, 255))
    ds = build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path), resolution=8,
                                  holdout=0.0))
    assert ds.classes == ("cat", "dog") and len(ds) == 3
    assert ds.targets() == [0, 0, 1]
    img, label = ds[2]
    assert img.shape == (3, 8, 8) and label == 1
    assert torch.allclose(img[2], torch.ones(8, 8)) and torch.allclose(img[0], torch.zeros(8, 8))
    assert ds.mean == (0.485, 0.456, 0.406)
    # No test folder: without a held-out share there is no test split (tests/data has the rest).
    with pytest.raises(GradleakError, match="no test folder and data.holdout=0.0"):
        build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path), split="test",
                                 holdout=0.0))


def test_imagefolder_without_split_and_grey_input(tmp_path):
    path = tmp_path / "one" / "x.png"
    path.parent.mkdir()
    Image.new("L", (12, 12), 128).save(path)
    ds = build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path), resolution=4))
    img, label = ds[0]
    # Grey files stay grey (data.channels=null: as stored); data.channels=3 repeats them.
    assert ds.classes == ("one",) and img.shape == (1, 4, 4) and label == 0
    ds = build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path), resolution=4,
                                  channels=3))
    assert ds[0][0].shape == (3, 4, 4)


def test_imagefolder_missing_and_empty(tmp_path):
    missing = tmp_path / "absent"
    with pytest.raises(GradleakError, match="root/<split>/<class>") as err:
        build_dataset(DataConfig(dataset="imagefolder", root=str(missing)))
    assert str(missing) in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GradleakError, match="root/<split>/<class>") as err:
        build_dataset(DataConfig(dataset="imagefolder", root=str(empty)))
    assert str(empty) in str(err.value)


# --- sampling ------------------------------------------------------------------------------


@pytest.fixture
def toy() -> TensorImageDataset:
    images = torch.rand(30, 1, 4, 4)
    labels = torch.arange(30) % 3
    return TensorImageDataset("toy", images, labels, ("a", "b", "c"))


def test_sampling_explicit_indices(toy):
    cfg = DataConfig(num_samples=3, indices=[7, 0, 9])
    images, labels, idx = select_victim_samples(toy, cfg, seed=0)
    assert idx == [7, 0, 9]
    assert images.shape == (3, 1, 4, 4) and labels.dtype == torch.long
    assert torch.equal(images[1], toy.images[0]) and labels.tolist()[:2] == [1, 0]
    # The same sample twice is not a batch of two samples (issue 12): refused.
    with pytest.raises(GradleakError, match="repeats"):
        select_victim_samples(toy, DataConfig(num_samples=3, indices=[7, 0, 7]), seed=0)


def test_sampling_bad_indices(toy):
    with pytest.raises(GradleakError, match=r"entry 30 .*0-29"):
        select_victim_samples(toy, DataConfig(num_samples=2, indices=[1, 30]), seed=0)
    with pytest.raises(GradleakError, match="entry -1"):
        select_victim_samples(toy, DataConfig(num_samples=1, indices=[-1]), seed=0)
    with pytest.raises(GradleakError, match="num_samples=3"):
        select_victim_samples(toy, DataConfig(num_samples=3, indices=[1, 2]), seed=0)


def test_sampling_too_many(toy):
    with pytest.raises(GradleakError, match="data.num_samples=31 exceeds the 30 samples"):
        select_victim_samples(toy, DataConfig(num_samples=31), seed=0)


def test_sampling_distinct_labels_and_wrap(toy):
    _, labels, idx = select_victim_samples(toy, DataConfig(num_samples=3), seed=1)
    assert sorted(labels.tolist()) == [0, 1, 2]
    _, labels, idx = select_victim_samples(toy, DataConfig(num_samples=7), seed=1)
    assert len(set(idx)) == 7
    assert labels[:3].tolist() == labels[3:6].tolist()  # same class order every round
    assert labels[6] == labels[0]


def test_sampling_uniform(toy):
    cfg = DataConfig(num_samples=30, distinct_labels=False)
    _, _, idx = select_victim_samples(toy, cfg, seed=0)
    assert sorted(idx) == list(range(30))


def test_sampling_deterministic_by_seed(toy):
    for distinct in (True, False):
        cfg = DataConfig(num_samples=5, distinct_labels=distinct)
        a = select_victim_samples(toy, cfg, seed=3)
        b = select_victim_samples(toy, cfg, seed=3)
        assert a[2] == b[2] and torch.equal(a[0], b[0])
        others = {tuple(select_victim_samples(toy, cfg, seed=s)[2]) for s in range(10)}
        assert len(others) > 1


def test_sampling_prefers_whole_photos(sk):
    per_class = sk.per_class
    from gradleak.scenario import SeedStreams

    # The default demo (scenario seed 0 -> its victim stream) shows the astronaut.
    victim_seed = SeedStreams.from_seed(0).victim
    _, labels, idx = select_victim_samples(sk, DataConfig(num_samples=1), seed=victim_seed)
    assert idx[0] % per_class == 0 and sk.classes[labels[0]] == "astronaut"
    for seed in range(3):
        _, labels, idx = select_victim_samples(sk, DataConfig(num_samples=12), seed=seed)
        assert all(i % per_class == 0 for i in idx[:10])  # every whole photo before any crop
        assert len(set(labels[:10].tolist())) == 10
        assert all(i % per_class != 0 for i in idx[10:])
