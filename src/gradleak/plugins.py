"""User plug-ins: modules that register attacks, defenses, models or datasets.

A plug-in is a module the *user names*: ``--plugin MODULE_OR_FILE`` on the command line
(repeatable) or ``GRADLEAK_PLUGINS`` (entries separated by ``os.pathsep``, i.e. ``:`` on Linux).
An entry ending in ``.py`` is a file imported under a private module name; anything else is an
importable module name (``my_pkg.attacks``). Importing runs the module's ``register_*``
decorators, so its names become valid config values. Plug-ins are imported before the config is
resolved, and again in every worker process of a sweep (local processes and Ray tasks alike).

Only these explicit options ever import user code: nothing gradleak reads as data (configs,
plans, checkpoints, stores) can name a module to import.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from gradleak.errors import GradleakError

ENV = "GRADLEAK_PLUGINS"
_loaded: dict[str, ModuleType] = {}


def from_env() -> list[str]:
    """The plug-ins named in ``$GRADLEAK_PLUGINS`` (empty entries ignored)."""
    return [p for p in os.environ.get(ENV, "").split(os.pathsep) if p.strip()]


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r}) at import"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise GradleakError(f"plug-in file {str(path)!r} does not exist")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"gradleak_plugin_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise GradleakError(f"plug-in file {str(path)!r} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except GradleakError:
        raise
    except (Exception, SystemExit) as exc:  # SystemExit too: gradleak must not exit 0 unrun
        del sys.modules[name]
        raise GradleakError(f"plug-in {str(path)!r} failed to import: {_one_line(exc)}") from None
    return module


def load_plugin(entry: str) -> ModuleType:
    """Import one plug-in (a ``.py`` path or a module name) once; later calls reuse it."""
    entry = entry.strip()
    if not entry:
        raise GradleakError("bad value '' for --plugin: name a module or a .py file")
    key = str(Path(entry).resolve()) if entry.endswith(".py") else entry
    if key in _loaded:
        return _loaded[key]
    if entry.endswith(".py"):
        module = _import_file(Path(key))
    else:
        try:
            module = importlib.import_module(entry)
        except ModuleNotFoundError as exc:
            raise GradleakError(f"plug-in module {entry!r} not found ({exc.msg}); give an "
                                "importable module name or a path ending in .py") from None
        except (Exception, SystemExit) as exc:
            raise GradleakError(f"plug-in {entry!r} failed to import: {_one_line(exc)}") from None
    _loaded[key] = module
    return module


def load_plugins(entries: Iterable[str] = (), *, env: bool = True) -> list[str]:
    """Import ``entries`` and (with ``env``) those of ``$GRADLEAK_PLUGINS``; returns the list
    imported, resolved so that a worker process can import exactly the same ones."""
    names = [*(from_env() if env else []), *entries]
    resolved = []
    for entry in dict.fromkeys(names):
        load_plugin(entry)
        resolved.append(str(Path(entry).resolve()) if entry.strip().endswith(".py") else entry)
    return resolved


def loaded() -> list[str]:
    """The plug-ins imported so far in this process (to hand to worker processes)."""
    return list(_loaded)
