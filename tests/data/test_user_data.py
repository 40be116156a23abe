"""The user's own data: ImageFolder with and without a test split, .npz files, torch Datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from gradleak.config import DataConfig
from gradleak.data import build_dataset, describe_dataset, from_torch_dataset
from gradleak.data.holdout import holdout_indices
from gradleak.errors import GradleakError


def _png(path: Path, value: int, size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def _tree(root: Path, per_class: int = 5, classes=("cat", "dog")) -> None:
    for c, name in enumerate(classes):
        for i in range(per_class):
            _png(root / name / f"{i}.png", 10 * i + 100 * c)


def _folder(root, split="train", **kw):
    return build_dataset(DataConfig(dataset="imagefolder", root=str(root), split=split,
                                    resolution=8, **kw))


# --- ImageFolder -------------------------------------------------------------------------


def test_imagefolder_without_test_split_holds_out_part(tmp_path):
    _tree(tmp_path, per_class=5)
    train, test = _folder(tmp_path), _folder(tmp_path, split="test")
    assert len(train) == 8 and len(test) == 2  # 20% of each class of 5
    train_files = {p for p, _ in train.samples}
    test_files = {p for p, _ in test.samples}
    assert not train_files & test_files and len(train_files | test_files) == 10
    assert sorted(test.targets()) == [0, 1]
    # The same split on every load (train and test are built separately by the FL server).
    assert [p for p, _ in _folder(tmp_path, split="test").samples] == [p for p, _ in test.samples]
    info = describe_dataset(test)
    assert "held out" in info["split"] and "never used for training" in info["split"]
    assert "centre-cropped" in info["transform"] and "8x8" in info["transform"]
    assert "held out as the test split" in describe_dataset(train)["split"]


def test_imagefolder_holdout_fraction_and_zero(tmp_path):
    _tree(tmp_path / "train", per_class=10)
    assert len(_folder(tmp_path, split="test", holdout=0.5)) == 10
    assert len(_folder(tmp_path, holdout=0.0)) == 20
    with pytest.raises(GradleakError, match="data.holdout=0.0 holds out no images"):
        _folder(tmp_path, split="test", holdout=0.0)
    with pytest.raises(GradleakError, match="data.holdout: must be in"):
        _folder(tmp_path, holdout=1.0)


def test_imagefolder_real_test_folder_and_test_root(tmp_path):
    _tree(tmp_path / "data" / "train", per_class=3)
    _tree(tmp_path / "data" / "test", per_class=2)
    train, test = _folder(tmp_path / "data"), _folder(tmp_path / "data", split="test")
    assert len(train) == 6 and len(test) == 4  # no holdout when a test folder exists
    assert "all 4 images" in describe_dataset(test)["split"]
    _tree(tmp_path / "flat", per_class=3)
    _tree(tmp_path / "elsewhere", per_class=1)
    kw = {"test_root": str(tmp_path / "elsewhere")}
    assert len(_folder(tmp_path / "flat", **kw)) == 6
    test = _folder(tmp_path / "flat", split="test", **kw)
    assert len(test) == 2 and str(tmp_path / "elsewhere") in describe_dataset(test)["split"]
    with pytest.raises(GradleakError, match="data.test_root .* is not a folder"):
        _folder(tmp_path / "flat", test_root=str(tmp_path / "nope"))


def test_holdout_keeps_single_image_classes_for_training():
    targets = [0, 1, 1, 2, 2, 2, 2, 2]
    test = holdout_indices(targets, 0.2, "test")
    train = holdout_indices(targets, 0.2, "train")
    assert sorted(test + train) == list(range(8))
    assert [targets[i] for i in test] == [1, 2]


# --- .npz ------------------------------------------------------------------------------------


def _save(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _npz(root, split="train", resolution=8, **kw):
    return build_dataset(DataConfig(dataset="npz", root=root, split=split,
                                    resolution=resolution, **kw))


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "gray"])
def test_npz_layouts_uint8(tmp_path, layout):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(10, 8, 8, 3), dtype=np.uint8)
    stored = {"nhwc": x, "nchw": x.transpose(0, 3, 1, 2), "gray": x[..., 0]}[layout]
    y = np.arange(10) % 2
    ds = _npz(_save(tmp_path / "d.npz", x=stored, y=y), holdout=0.0)
    img, label = ds[3]
    expected = torch.from_numpy(x[3]).permute(2, 0, 1).float() / 255
    if layout == "gray":
        expected = expected[:1]
    assert ds.channels == expected.shape[0] and torch.allclose(img, expected)
    assert label == 1 and ds.classes == ("0", "1") and ds.targets() == y.tolist()
    assert len(ds.mean) == ds.channels
    assert describe_dataset(ds)["transform"].startswith("read as")


def test_npz_float_crop_resize_and_test_arrays(tmp_path):
    x = np.random.default_rng(1).random((6, 3, 12, 16)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    path = _save(tmp_path / "d.npz", x=x, y=y, x_test=x[:2], y_test=y[:2],
                 classes=np.array(["a", "b", "c"]))
    ds = _npz(path, resolution=6)
    img, _ = ds[0]
    assert img.shape == (3, 6, 6) and len(ds) == 6 and ds.classes == ("a", "b", "c")
    note = describe_dataset(ds)["transform"]
    assert "centre-cropped from 12x16 to 12x12" in note and "resized from 12x12 to 6x6" in note
    test = _npz(path, split="test", resolution=12)
    assert len(test) == 2 and torch.allclose(test[1][0], torch.from_numpy(x[1, :, :, 2:14]))


def test_npz_holdout_without_test_split(tmp_path):
    x = np.zeros((20, 4, 4, 1), dtype=np.uint8)
    y = np.repeat(np.arange(2), 10)
    path = _save(tmp_path / "d.npz", x=x, y=y)
    train, test = _npz(path, resolution=4), _npz(path, split="test", resolution=4)
    assert len(train) == 16 and len(test) == 4 and "held out" in describe_dataset(test)["split"]


def test_npz_bad_inputs_are_one_line_errors(tmp_path):
    good_x = np.zeros((4, 4, 4, 3), dtype=np.uint8)
    cases = {
        "nox.npz": ({"images": good_x, "y": np.zeros(4)}, "has no 'x' array .found: images, y"),
        "noy.npz": ({"x": good_x}, "has no 'y' array"),
        "shape.npz": ({"x": np.zeros((4, 5, 5, 5)), "y": np.zeros(4)}, "neither axis 1 nor axis 3"),
        "range.npz": ({"x": good_x.astype(np.float32) + 2, "y": np.zeros(4)}, "expected \\[0, 1\\]"),
        "count.npz": ({"x": good_x, "y": np.zeros(3)}, "y has shape \\(3,\\) but x has 4"),
        "labels.npz": ({"x": good_x, "y": np.array([0.5, 1, 0, 1])}, "integer class labels"),
        "obj.npz": ({"x": np.array([good_x[0], "a"], dtype=object), "y": np.zeros(2)},
                    "object arrays are not loaded"),
    }
    for file, (arrays, message) in cases.items():
        path = _save(tmp_path / file, **arrays)
        with pytest.raises(GradleakError, match=message) as info:
            _npz(path)
        assert "\n" not in str(info.value)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(GradleakError, match="cannot read .* as .npz"):
        _npz(str(tmp_path / "junk.npz"))
    with pytest.raises(GradleakError, match="is not a file"):
        _npz(str(tmp_path / "absent.npz"))


# --- torch Dataset ------------------------------------------------------------------------


class _Pairs(Dataset):
    def __init__(self, images, labels, classes=None):
        self.images, self.labels = images, labels
        if classes:
            self.classes = classes

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def test_from_torch_dataset_tensors_pil_and_arrays():
    images = torch.rand(5, 3, 10, 8)
    ds = from_torch_dataset(_Pairs(images, torch.tensor([0, 2, 1, 2, 0])), resolution=4)
    img, label = ds[1]
    assert img.shape == (3, 4, 4) and label == 2 and ds.num_classes == 3
    assert ds.targets() == [0, 2, 1, 2, 0] and len(ds.mean) == 3
    note = describe_dataset(ds)["transform"]
    assert "centre-cropped" in note and "resized from 8x8 to 4x4" in note
    pil = [Image.new("RGB", (6, 6), (255, 0, 0))] * 2
    ds = from_torch_dataset(_Pairs(pil, [0, 1], classes=["r", "g"]), mean=(0.5,), std=(0.2,))
    assert ds.classes == ("r", "g") and ds.resolution == 6 and ds.mean == (0.5, 0.5, 0.5)
    assert torch.allclose(ds[0][0][0], torch.ones(6, 6))
    arrays = [np.full((4, 4), 255, dtype=np.uint8)] * 3
    ds = from_torch_dataset(_Pairs(arrays, [np.int64(1)] * 3), num_classes=4)
    assert ds.channels == 1 and ds.num_classes == 4 and ds[2][1] == 1


def test_from_torch_dataset_refuses_normalised_or_odd_items():
    normed = torch.randn(3, 3, 4, 4) * 3
    with pytest.raises(GradleakError, match="not \\[0, 1\\]; drop Normalize"):
        from_torch_dataset(_Pairs(normed, [0, 1, 0]))
    with pytest.raises(GradleakError, match="image is a str"):
        from_torch_dataset(_Pairs(["a", "b"], [0, 1]))
    with pytest.raises(GradleakError, match="label -1 is not a class index"):
        from_torch_dataset(_Pairs(torch.rand(2, 3, 4, 4), [-1, 0]))
    with pytest.raises(GradleakError, match="bad std"):
        from_torch_dataset(_Pairs(torch.rand(2, 3, 4, 4), [0, 1]), mean=(0.5,), std=(0.0,))


def test_scenario_runs_on_a_torch_dataset_and_a_prepared_module():
    """The Python path: any Dataset + any nn.Module, wrapped by gradleak's helpers."""
    from torch import nn

    from gradleak.config import load_config
    from gradleak.models import prepare_user_model
    from gradleak.scenario import Scenario

    g = torch.Generator().manual_seed(0)
    source = _Pairs(torch.rand(6, 3, 12, 12, generator=g), [0, 1, 2, 0, 1, 2])
    data = from_torch_dataset(source, resolution=8)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    model = prepare_user_model(net, mean=data.mean, std=data.std, num_classes=3, resolution=8)
    cfg = load_config(None, ["data.num_samples=2", "attack.iterations=2"])
    run = Scenario.from_config(cfg, model=model, data=data).run()
    assert run.truth.shape == (2, 3, 8, 8)
    assert "resized from 12x12 to 8x8" in run.result["scenario"]["data"]["transform"]
