"""data.channels: images given with the channels the model was trained on (issue 26, item 1)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from gradleak.cli import main
from gradleak.config import DataConfig, load_config
from gradleak.data import build_dataset, describe_dataset
from gradleak.data.base import LUMA, TensorImageDataset, with_channels
from gradleak.errors import GradleakError

GREY_NET = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        """A LeNet-style grey model: its first layer takes 1 channel whatever the data."""

        def __init__(self, num_classes):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4),
                                          nn.ReLU())
            self.head = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.head(self.features(x).mean(dim=(2, 3)))

    class Flexible(Net):
        """Built with the data's channels (the checkpoint then decides)."""

        def __init__(self, num_classes, channels):
            super().__init__(num_classes)
            self.features[0] = nn.Conv2d(channels, 4, 3, padding=1)
''')


def _tree(root, mode: str, classes=("a", "b"), per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (10, 10) if mode == "L" else (10, 10, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
                root / c / f"{i}.png")


@pytest.fixture
def grey_model(tmp_path):
    """The model file and a checkpoint saved by the user's own training code (bare state_dict)."""
    file = tmp_path / "lenet.py"
    file.write_text(GREY_NET)
    ns: dict = {}
    exec(compile(GREY_NET, str(file), "exec"), ns)
    torch.manual_seed(0)
    ckpt = tmp_path / "lenet.pt"
    torch.save(ns["Net"](2).state_dict(), ckpt)
    return file, ckpt


def _attack(tmp_path, root, file, ckpt, *extra, name="Net"):
    return main(["attack", "--quiet", "--out", str(tmp_path / "run"), f"model.name={file}:{name}",
                 f"model.checkpoint={ckpt}", "data.dataset=imagefolder", f"data.root={root}",
                 "data.resolution=8", "data.num_samples=1", "attack.iterations=2", *extra])


def test_grey_imagefolder_feeds_a_one_channel_model_and_its_checkpoint(tmp_path, grey_model,
                                                                       capsys):
    root = tmp_path / "imgs"
    _tree(root, "RGB")  # RGB files: data.channels=1 turns them grey for the grey model
    file, ckpt = grey_model
    assert _attack(tmp_path, root, file, ckpt, "data.channels=1") == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "run" / "result.json").read_text())["scenario"]["data"]
    assert data["channels"] == 1 and "grey (PIL L)" in data["transform"]
    mean = sum(w * v for w, v in zip(LUMA, (0.485, 0.456, 0.406), strict=True))
    assert data["normalization"]["mean"] == [pytest.approx(mean, abs=1e-5)]
    assert len(data["normalization"]["std"]) == 1


@pytest.mark.parametrize(("mode", "extra", "data_channels"), [
    ("RGB", [], 3),                       # RGB files as stored
    ("L", ["data.channels=3"], 3),        # grey files repeated to RGB
])
def test_channel_mismatch_is_one_line_naming_both_and_the_key(tmp_path, grey_model, capsys,
                                                              mode, extra, data_channels):
    root = tmp_path / "imgs"
    _tree(root, mode)
    file, ckpt = grey_model
    assert _attack(tmp_path, root, file, ckpt, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert f"takes 1-channel images but the data has {data_channels} channels" in err
    assert "set data.channels=1" in err
    # A model built with the data's channels: the checkpoint says what it was trained on.
    assert _attack(tmp_path, root, file, ckpt, *extra, name="Flexible") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "trained on 1-channel images" in err
    assert "set data.channels=1" in err and f"has {data_channels} channels" in err


def test_grey_imagefolder_stays_grey_and_train_test_classes_must_agree(tmp_path):
    _tree(tmp_path / "train", "L")
    _tree(tmp_path / "test", "L")
    ds = build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path), resolution=8))
    assert ds.channels == 1 and ds[0][0].shape == (1, 8, 8)
    rgb = build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path), resolution=8,
                                   channels=3))
    assert rgb[0][0].shape == (3, 8, 8) and torch.equal(rgb[0][0][0], rgb[0][0][2])
    assert describe_dataset(rgb)["normalization"]["mean"] == [0.485, 0.456, 0.406]
    _tree(tmp_path / "test", "L", classes=("c",))  # test now has classes a, b and c
    for split in ("train", "test"):
        with pytest.raises(GradleakError, match="train classes .* differ .*c") as err:
            build_dataset(DataConfig(dataset="imagefolder", root=str(tmp_path), split=split))
        assert "\n" not in str(err.value)


def test_npz_and_in_memory_data_take_the_asked_channels(tmp_path):
    rgb = np.zeros((6, 8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red: luminance 0.299
    np.savez(tmp_path / "d.npz", x=rgb, y=np.arange(6) % 2)
    cfg = DataConfig(dataset="npz", root=str(tmp_path / "d.npz"), resolution=8, channels=1,
                     holdout=0.0)
    ds = build_dataset(cfg)
    assert ds.channels == 1 and ds[0][0].shape == (1, 8, 8)
    assert ds[0][0].mean().item() == pytest.approx(0.299, abs=1e-4)
    assert ds.mean == (pytest.approx(0.299, abs=1e-4),) and "luminance" in ds.transform_note
    grey = TensorImageDataset("g", torch.rand(4, 1, 8, 8), torch.arange(4) % 2, ("a", "b"))
    view = with_channels(grey, 3)
    images, _ = view.tensors([0, 1])
    assert images.shape == (2, 3, 8, 8) and torch.equal(images[:, 0], images[:, 2])
    assert view.mean == grey.mean * 3 and with_channels(grey, None) is grey
    # The loaders without files of their own (here skimage) are converted by build_dataset.
    sk = build_dataset(load_config(overrides=["data.channels=1", "data.resolution=8"]).data)
    assert sk.channels == 1 and sk.tensors([0])[0].shape == (1, 1, 8, 8) and len(sk.mean) == 1


def test_channels_key_allows_only_1_or_3(capsys):
    assert main(["config", "data.channels=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "data.channels" in err and "allowed: 1, 3" in err and "\n" not in err
