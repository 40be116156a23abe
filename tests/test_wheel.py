"""The built wheel works on its own: built from (a copy of) the source tree, installed into a fresh
virtual environment with the source tree nowhere on its path, the ``gradleak`` it installs lists
and shows experiments, runs an attack, an audit and ``doctor``. Offline: the build uses this
environment's setuptools (no build isolation) and the heavy dependencies (torch, numpy, ...) are
this environment's site-packages, named by a ``.pth`` file in the fresh one (a ``.pth`` line only
adds its folder: that folder's own ``.pth`` files, the editable install's among them, are not
processed, so ``src/`` stays off the path)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "gradleak"
TINY = ["model.name=mlp", "model.hidden=[16]", "data.resolution=16", "attack.iterations=5"]
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def _run(cmd: list[str | Path], cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{cmd}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def _package_files() -> set[str]:
    """Every file of src/gradleak as a wheel names it (gradleak/...), caches left out."""
    return {p.relative_to(PACKAGE.parent).as_posix() for p in PACKAGE.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel`` of a copy of the tree (a build in place would leave build/ and egg-info)."""
    root = tmp_path_factory.mktemp("wheel")
    tree = root / "tree"
    (tree / "src").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    shutil.copytree(PACKAGE, tree / "src" / "gradleak", ignore=_SKIP)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-q", "-w", root / "dist", tree], cwd=root)
    (found,) = (root / "dist").glob("gradleak-*.whl")
    return found


@pytest.fixture(scope="module")
def fresh(wheel: Path, tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """A new venv holding only the wheel (+ a .pth naming our site-packages): (bin, env, cwd)."""
    root = tmp_path_factory.mktemp("fresh")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root)
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps",
          "--no-index", "-q", wheel], cwd=root)
    site = Path(_run([venv / "bin" / "python", "-c",
                      "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=root).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib"))
    (site / "_gradleak_test_deps.pth").write_text("".join(f"{p}\n" for p in ours))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME",
                                                            "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1", GRADLEAK_HOME=str(root / "home"))
    work = root / "work"  # the working directory: outside the repository
    work.mkdir()
    return venv / "bin", env, work


def test_the_wheel_holds_every_file_of_the_package(wheel: Path):
    """Python modules and every data file the code reads (configs, the ladder, experiment YAMLs)."""
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if n.startswith("gradleak/")}
    assert _package_files() - shipped == set(), "add them to [tool.setuptools.package-data]"
    assert {"gradleak/configs/audit.yaml", "gradleak/configs/audit_ladder.yaml",
            "gradleak/configs/attacks/dlg.yaml", "gradleak/configs/experiments/tab1.yaml"} <= shipped


def test_the_installed_gradleak_works_without_the_source_tree(fresh):
    bin_dir, env, work = fresh
    site = _run([bin_dir / "python", "-c", "import sys, gradleak; print(gradleak.__file__); "
                 "print('\\n'.join(sys.path))"], cwd=work, env=env).stdout.splitlines()
    assert Path(site[0]).is_relative_to(bin_dir.parent), site[0]
    assert not any(p and (Path(p) == REPO or Path(p).is_relative_to(REPO / "src")) for p in site[1:])

    gradleak = bin_dir / "gradleak"
    listed = _run([gradleak, "experiment", "list"], cwd=work, env=env).stdout
    names = [line.split()[0] for line in listed.splitlines() if not line.startswith(" ")]
    assert sorted(names) == sorted(p.stem for p in (PACKAGE / "configs" / "experiments").glob("*.yaml"))
    assert len(names) >= 13 and "tab1" in names  # the paper's 13, plus text experiments

    shown = _run([gradleak, "experiment", "show", "tab1"], cwd=work, env=env).stdout
    assert "experiment: tab1" in shown and shown.rstrip().endswith("runs")

    done = _run([gradleak, "attack", "--quiet", "--out", "attack", *TINY], cwd=work, env=env)
    result = json.loads((work / "attack" / "result.json").read_text())
    assert isinstance(result["metrics"]["psnr"], float) and "result.json" in done.stdout
    assert (work / "attack" / "reconstruction.png").is_file()

    _run([gradleak, "audit", "--out", "audit", "--budget", "quick", "--seeds", "1", "--max-seeds",
          "1", "--no-recommend", "--quiet", *TINY], cwd=work, env=env)
    verdict = json.loads((work / "audit" / "verdict.json").read_text())
    assert verdict["verdict"] in ("leaks", "does not leak", "inconclusive")
    assert (work / "audit" / "index.html").is_file() and (work / "audit" / "report.md").is_file()

    report = _run([gradleak, "doctor"], cwd=work, env=env).stdout.splitlines()
    assert len(report) == 10 and report[0].startswith("info     gradleak")
    assert str(bin_dir.parent) in report[0] and "git" not in report[0]  # installed: no commit
