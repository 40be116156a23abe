"""Safe loading of Hugging Face model directories: safetensors weights only, no remote code.

A model directory is data, so nothing in it may run: weights come only from ``*.safetensors``
(a pickled ``pytorch_model.bin`` / ``.pt`` / ``.ckpt`` can execute code when unpickled), a
``config.json`` or ``tokenizer_config.json`` with ``auto_map`` (code shipped next to the
weights) is refused, and so is a ``model_type`` this ``transformers`` does not know (it would
need ``trust_remote_code``). Every ``transformers`` call is ``local_files_only=True``.

Heads that the checkpoint lacks (or has with another number of classes) are initialised from
the caller's seed, so the same config builds the same model.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gradleak.errors import GradleakError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
CONVERT_HINT = ("convert it once, where you trust the file: `AutoModel...from_pretrained(DIR)"
                ".save_pretrained(OUT)` writes model.safetensors")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No ``transformers`` progress bars or load reports: gradleak says what matters itself."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _read_json(path: Path, where: str) -> dict[str, Any]:
    try:
        tree = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GradleakError(f"{where}: {path.name} is not valid JSON ({exc})") from None
    if not isinstance(tree, dict):
        raise GradleakError(f"{where}: {path.name} must hold a JSON object")
    return tree


def check_model_dir(path: str | Path, where: str = "model.path") -> tuple[Path, dict[str, Any]]:
    """``(absolute dir, config.json)`` of a loadable model directory; one line naming what is
    wrong otherwise (missing, pickled weights only, remote code, unknown model type)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    p = Path(path).expanduser().resolve()
    where = f"{where} {str(path)!r}"
    if not p.is_dir():
        raise GradleakError(f"{where} is not a folder; give a Hugging Face model directory "
                            "(config.json + *.safetensors + tokenizer files)")
    if not (p / "config.json").is_file():
        raise GradleakError(f"{where} has no config.json: not a Hugging Face model directory")
    if not any(p.glob("*.safetensors")):
        pickles = sorted(f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES)
        found = f" (found {', '.join(pickles[:3])})" if pickles else ""
        raise GradleakError(f"{where} has no *.safetensors weights{found}; gradleak loads "
                            f"safetensors only, never pickles: {CONVERT_HINT}")
    config = _read_json(p / "config.json", where)
    if "auto_map" in config:
        raise GradleakError(f"{where}: config.json has auto_map (the model's own code); gradleak "
                            "never runs code from a model directory (no trust_remote_code)")
    kind = config.get("model_type")
    if not isinstance(kind, str) or kind not in CONFIG_MAPPING:
        raise GradleakError(f"{where}: model_type {kind!r} is not a transformers architecture "
                            "(it would need remote code, which gradleak never runs)")
    return p, config


def task_of(config: dict[str, Any]) -> str:
    """``causal_lm`` when config.json's ``architectures`` name a language-model head
    (``...ForCausalLM`` / ``...LMHeadModel``), else ``classification``."""
    names = config.get("architectures") or []
    causal = any(isinstance(n, str) and n.endswith(CAUSAL_SUFFIXES) for n in names)
    return "causal_lm" if causal else "classification"


def load_tokenizer(path: Path, where: str = "model.path") -> Any:
    """The directory's own tokenizer (``AutoTokenizer``, local files, no remote code)."""
    from transformers import AutoTokenizer

    where = f"{where} {str(path)!r}"
    cfg_file = path / "tokenizer_config.json"
    if cfg_file.is_file() and "auto_map" in _read_json(cfg_file, where):
        raise GradleakError(f"{where}: tokenizer_config.json has auto_map (the tokenizer's own "
                            "code); gradleak never runs code from a model directory")
    if not any((path / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json",
                                              "vocab.txt", "vocab.json", "tokenizer.model")):
        raise GradleakError(f"{where} has no tokenizer (tokenizer.json); save it next to the "
                            "model with tokenizer.save_pretrained(DIR)")
    try:
        with quiet_transformers(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                                trust_remote_code=False)
    except Exception as exc:  # transformers raises ValueError/OSError/... for a bad folder
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GradleakError(f"{where}: cannot build its tokenizer without remote code "
                            f"({first[:200]}); save a fast tokenizer (tokenizer.json)") from None
    if isinstance(tok, bool) or not hasattr(tok, "convert_ids_to_tokens"):
        raise GradleakError(f"{where}: its tokenizer is not a transformers tokenizer")
    return tok


def load_pretrained(cls: Any, path: Path, *, seed: int, where: str = "model.path",
                    warn_new: bool = True, **kwargs: Any) -> torch.nn.Module:
    """``cls.from_pretrained(path, ...)`` from safetensors only, local files only, no remote code;
    weights missing from the checkpoint (a new head) are drawn from ``seed``. With ``warn_new``
    a head that is new or re-initialised for another size is a warning."""
    try:
        with torch.random.fork_rng(devices=[]), quiet_transformers(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(seed)
            model, info = cls.from_pretrained(str(path), local_files_only=True,
                                              use_safetensors=True, trust_remote_code=False,
                                              output_loading_info=True, **kwargs)
    except GradleakError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GradleakError(f"{where} {str(path)!r}: cannot load it as "
                            f"{getattr(cls, '__name__', cls)} ({first[:200]})") from None
    if warn_new:
        mismatched = sorted(k[0] if isinstance(k, tuple) else str(k)
                            for k in info.get("mismatched_keys") or ())
        missing = sorted(info.get("missing_keys") or ())
        if mismatched:
            warnings.warn(f"{where} {str(path)!r}: the checkpoint's head has another size "
                          f"({', '.join(mismatched[:4])}); re-initialised from seed={seed} for "
                          "this dataset's classes", stacklevel=3)
        if missing:
            warnings.warn(f"{where} {str(path)!r}: {', '.join(missing[:4])}"
                          f"{' and more' if len(missing) > 4 else ''} not in the checkpoint; "
                          f"initialised from seed={seed}", stacklevel=3)
    return model
