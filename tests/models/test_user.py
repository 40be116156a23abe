"""User models: file.py:NAME and package.module:NAME, normalisation, checkpoints, bad values."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from gradleak.config import ModelConfig, load_config
from gradleak.errors import GradleakError
from gradleak.models import (
    Classifier,
    build_model,
    prepare_user_model,
    recorded_model_config,
)

USER_CODE = textwrap.dedent('''
    import torch
    from torch import nn

    class TinyCNN(nn.Module):
        def __init__(self, num_classes, channels=3):
            super().__init__()
            self.conv1 = nn.Conv2d(channels, 4, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.head = nn.Linear(4, num_classes)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.conv2(x))
            return self.head(x.mean(dim=(2, 3)))

    def make_cnn(num_classes, **kwargs):
        return TinyCNN(num_classes, kwargs["channels"])

    def make_raises(num_classes, resolution):
        raise ValueError("needs resolution 224")

    def make_tensor(num_classes):
        return torch.zeros(3)

    class NotAModule:
        pass

    WIDTH = 4

    class FrozenStem(TinyCNN):
        """Fine-tuning only the head: the client shares no update for the frozen layers."""

        def __init__(self, num_classes):
            super().__init__(num_classes)
            for p in [*self.conv1.parameters(), *self.bn1.parameters()]:
                p.requires_grad_(False)
''')


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_model.py"
    path.write_text(USER_CODE)
    return path


def _build(name, *, classes=5, channels=3, **kw):
    return build_model(ModelConfig(name=name, **kw), num_classes=classes, channels=channels,
                       resolution=16, mean=(0.5,) * channels, std=(0.25,) * channels)


@pytest.mark.parametrize("attr", ["TinyCNN", "make_cnn"])
def test_class_and_factory_from_file(user_file, attr):
    model = _build(f"{user_file}:{attr}", classes=7, channels=1)
    assert isinstance(model, Classifier) and type(model.net).__name__ == "TinyCNN"
    assert model.net.conv1.in_channels == 1 and model.net.head.out_features == 7
    x = torch.rand(3, 1, 16, 16)
    assert model(x).shape == (3, 7)
    # The dataset's statistics sit in front of the user's network.
    expected = model.net((x - 0.5) / 0.25)
    assert torch.allclose(model(x), expected)


def test_package_module_form(user_file, monkeypatch):
    pkg = user_file.parent / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(user_file.parent))
    try:
        model = _build("mypkg.nets:TinyCNN")
        assert model(torch.rand(2, 3, 16, 16)).shape == (2, 5)
    finally:
        for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
            del sys.modules[name]


def test_normalisation_options(user_file):
    name = f"{user_file}:TinyCNN"
    raw = _build(name, normalize=False)
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(raw(x), raw.net(x))
    own = _build(name, input_mean=[0.1, 0.2, 0.3], input_std=[0.5])
    m = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    assert torch.allclose(own(x), own.net((x - m) / 0.5))
    with pytest.raises(GradleakError, match="model.input_mean.*1 or 3 numbers"):
        _build(name, input_mean=[0.1, 0.2])
    with pytest.raises(GradleakError, match="need model.normalize=true"):
        _build(name, normalize=False, input_std=[0.2])
    with pytest.raises(GradleakError, match="for your own model"):
        _build("convnet", input_mean=[0.1])


def test_bad_names_are_one_line_errors(user_file):
    cases = {
        "nofile.py:X": "file 'nofile.py' does not exist",
        f"{user_file}:Missing": "has no 'Missing'.*TinyCNN",
        f"{user_file}:WIDTH": "WIDTH is a int",
        f"{user_file}:NotAModule": "a class that is not an nn.Module",
        f"{user_file}:make_raises": "calling make_raises\\(num_classes=5, resolution=16\\) "
                                    "failed: ValueError: needs resolution 224",
        f"{user_file}:make_tensor": "returned a Tensor",
        "no_such_pkg_xyz.mod:Net": "no module named 'no_such_pkg_xyz'",
        "os:system": "system is a builtin_function_or_method; expected an nn.Module",
        f"{user_file}:": "expected model.name=path/to/file.py:NAME",
    }
    for name, message in cases.items():
        with pytest.raises(GradleakError, match=message) as info:
            _build(name)
        assert "\n" not in str(info.value)
    bad = user_file.parent / "broken.py"
    bad.write_text("import nonexistent_module_abc\n")
    with pytest.raises(GradleakError, match="importing .*broken.py.* failed: ModuleNotFoundError"):
        _build(f"{bad}:Net")


def test_wrong_output_shape_is_caught(user_file):
    path = user_file.parent / "wrong.py"
    path.write_text(USER_CODE + "\ndef three(num_classes):\n    return TinyCNN(3)\n")
    with pytest.raises(GradleakError, match=r"to \(2, 3\), expected logits \(2, 5\)"):
        _build(f"{path}:three", classes=5)


def test_builtin_switches_ignored_and_left_out_of_record(user_file):
    name = f"{user_file}:TinyCNN"
    with pytest.warns(UserWarning, match="ignored for your own model .*: model.width, model.norm "):
        _build(name, width=8, norm="none")
    cfg = load_config(None, [f"model.name={name}"]).model
    record = recorded_model_config(cfg)
    assert record["name"] == name and "width" not in record and "depth" not in record
    assert "normalize" in record and "checkpoint" in record
    assert "width" in recorded_model_config(ModelConfig())


def test_user_checkpoint_keys(user_file, tmp_path):
    name = f"{user_file}:TinyCNN"
    trained = _build(name)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    trained.net.bn1.running_mean.fill_(0.3)
    net_state = trained.net.state_dict()  # the user's keys: conv1.weight, bn1.running_mean, ...
    forms = {
        "bare.pt": net_state,
        "wrapped.pt": {"state_dict": net_state, "epoch": 3},
        "ddp.pt": {f"module.{k}": v for k, v in net_state.items()},
        "full.pt": trained.state_dict(),
    }
    for file, state in forms.items():
        torch.save(state, tmp_path / file)
        again = _build(name, checkpoint=str(tmp_path / file))
        for (k, a), b in zip(trained.state_dict().items(), again.state_dict().values(), strict=True):
            assert torch.equal(a, b), (file, k)
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(GradleakError, match="does not fit model"):
        _build(name, checkpoint=str(tmp_path / "bad.pt"))


def test_prepare_user_model_api():
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(4))
    net(torch.zeros(1, 3, 8, 8))
    model = prepare_user_model(net, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2),
                               num_classes=4, resolution=8)
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(model(x), net((x - 0.5) / 0.2))
    assert prepare_user_model(model, mean=None, std=None) is model
    raw = prepare_user_model(net, normalize=False)
    assert torch.allclose(raw(x), net(x))
    with pytest.raises(GradleakError, match="needs mean and std"):
        prepare_user_model(net)
    with pytest.raises(GradleakError, match="expected logits \\(2, 10\\)"):
        prepare_user_model(net, mean=(0.5,), std=(0.2,), num_classes=10, resolution=8, channels=3)
    with pytest.raises(GradleakError, match="must be a torch.nn.Module"):
        prepare_user_model("resnet", mean=(0.5,), std=(0.2,))


def test_cli_attack_with_own_model_and_npz(user_file, tmp_path, capsys):
    """End to end: `gradleak attack` on the user's model file and .npz data."""
    import json

    import numpy as np
    import yaml

    from gradleak.cli import main

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8),
             y=np.arange(12) % 3)
    out = tmp_path / "run"
    code = main(["attack", "--out", str(out), f"model.name={user_file}:TinyCNN",
                 "data.dataset=npz", f"data.root={tmp_path / 'd.npz'}", "data.resolution=16",
                 "data.num_samples=2", "client.protocol=fedavg", "client.optimizer=adam",
                 "client.lr=0.01", "threat.knows_client_config=true", "attack.iterations=3",
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["name"] == f"{user_file}:TinyCNN" and "width" not in saved["model"]
    assert saved["client"]["optimizer"] == "adam"
    data = result["scenario"]["data"]
    assert data["name"] == "npz" and "held out" in data["split"] and "NHWC" in data["transform"]
    code = main(["attack", "--out", str(tmp_path / "bad"), "model.name=nofile.py:X", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "nofile.py" in err and "Traceback" not in err


@pytest.mark.parametrize("protocol", [
    ["client.protocol=fedsgd"],
    ["client.protocol=fedavg", "client.batch_size=1", "threat.knows_client_config=true"],
])
def test_frozen_layers_are_not_matched(user_file, tmp_path, protocol, capsys):
    from gradleak.cli import main

    code = main(["attack", "--out", str(tmp_path / "run"), f"model.name={user_file}:FrozenStem",
                 "data.resolution=16", "data.num_samples=2", "attack.iterations=2", *protocol,
                 "--quiet"])
    assert code == 0, capsys.readouterr().err


def test_user_file_may_import_its_siblings(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "gl_test_blocks.py").write_text(USER_CODE)
    (folder / "net.py").write_text("from gl_test_blocks import TinyCNN as Net\n")
    try:
        assert _build(f"{folder / 'net.py'}:Net")(torch.rand(1, 3, 16, 16)).shape == (1, 5)
    finally:
        sys.modules.pop("gl_test_blocks", None)
        if str(folder) in sys.path:
            sys.path.remove(str(folder))
