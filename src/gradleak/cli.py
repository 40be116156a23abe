"""``gradleak`` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import sys
import tempfile
import typing
import warnings
from pathlib import Path

import yaml

from gradleak.errors import GradleakError


def format_metrics(metrics: dict, keys: tuple[str, ...] = ("psnr", "ssim", "lpips",
                                                           "label_accuracy")) -> str:
    """``psnr=18.34 ssim=0.5123 ...``: 4 significant digits; null where not computable."""
    parts = []
    for key in keys:
        value = metrics.get(key)
        parts.append(f"{key}={value:.4g}" if isinstance(value, (int, float)) else f"{key}=null")
    return " ".join(parts)


TEXT_KEYS = ("rouge1", "rouge2", "exact", "semantic", "critical_recall", "token_recall")


def cmd_attack(args: argparse.Namespace) -> int:
    from gradleak.config import load_config

    cfg = load_config(args.config, args.overrides)  # before importing torch: bad input fails fast
    from gradleak.runner import run_scenario, write_run

    run = run_scenario(cfg, progress=not args.quiet)
    path = write_run(args.out, run)
    keys = TEXT_KEYS if "text" in run.result else ("psnr", "ssim", "lpips", "label_accuracy")
    print(f"{format_metrics(run.result['metrics'], keys)}  ->  {path}")
    return 0


def cmd_list(kind: str) -> int:
    if kind == "attacks":
        from gradleak.attacks import ATTACKS, build_attack
        from gradleak.config import load_config

        print(f"{'name':14} {'strategy':8} {'server':19} {'capability':40} {'goal':16} "
              f"{'modality':8} needs (with its default settings)  [paper]")
        for name in ATTACKS:
            attack = build_attack(load_config(None, [f"attack.name={name}"]).attack)
            needs = ", ".join(sorted(f"L{k.level} {k.title}" if k.level is not None else k.title
                                     for k in attack.needs()))
            i = attack.info
            print(f"{name:14} {i.strategy:8} {i.server:19} {i.capability:40} {i.goal:16} "
                  f"{i.modality:8} {needs}  [{i.paper}]")
    elif kind == "models":
        import torch

        from gradleak.config import ModelConfig
        from gradleak.models import MODELS, build_model, count_parameters

        for name in MODELS:
            # On the meta device shapes exist but no memory or random init: ~250M parameters
            # in the zoo would otherwise take tens of seconds to initialise on a CPU.
            with torch.device("meta"):
                model = build_model(ModelConfig(name=name), num_classes=10, channels=3,
                                    resolution=32, mean=(0.5,) * 3, std=(0.25,) * 3)
            builder = MODELS.get(name)
            doc = (builder.__doc__ or sys.modules[builder.__module__].__doc__ or "").strip()
            print(f"{name:12} {count_parameters(model):>12,} parameters (32 px, 10 classes)  "
                  f"{doc.splitlines()[0] if doc else ''}")
        from gradleak.models.hf import TEXT_MODELS

        for name in TEXT_MODELS:  # text (Hugging Face) models; also model.name=hf:DIR
            doc = (TEXT_MODELS.get(name).__doc__ or "").strip().splitlines()
            print(f"{name:12} {'text model':>23}              {doc[0] if doc else ''}")
    elif kind == "datasets":
        from gradleak.data import DATASETS

        for name in DATASETS:
            doc = (DATASETS.get(name).__doc__ or "").strip().splitlines()
            print(f"{name:14} {doc[0] if doc else ''}")
    elif kind == "defenses":
        from gradleak.defenses import DEFENSES

        for name in DEFENSES:
            doc = (DEFENSES.get(name).__doc__ or "").strip().splitlines()
            print(f"{name:14} {doc[0] if doc else ''}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from gradleak.config import load_config
    from gradleak.config_check import check_files

    cfg = load_config(args.config, args.overrides)
    check_files(cfg)  # paths exist, the model file defines NAME: read, never run
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


class _Parser(argparse.ArgumentParser):
    """Argument errors become one GradleakError line (exit 2), not usage text plus a line."""

    def error(self, message: str) -> typing.NoReturn:
        raise GradleakError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gradleak",
        description="Audit how much of a client's data a server reconstructs from FL updates.",
        epilog="--plugin MODULE_OR_FILE (repeatable, anywhere; also $GRADLEAK_PLUGINS) imports "
               "your own attacks, defenses, models or datasets first (docs/extending.md).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("attack", help="run one scenario and write result.json + images")
    p.add_argument("--config", help="YAML file with config sections")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("config", help="print the resolved config")
    p.add_argument("--config")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_config)

    for kind in ("attacks", "models", "datasets", "defenses"):
        p = sub.add_parser(kind, help=f"list the {kind}")
        p.set_defaults(func=lambda _a, kind=kind: cmd_list(kind))

    import gradleak.commands

    for module in pkgutil.iter_modules(gradleak.commands.__path__):
        importlib.import_module(f"gradleak.commands.{module.name}").add_parser(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    return f"gradleak: warning: {message}\n"


def _take_plugins(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``--plugin X`` / ``--plugin=X`` (anywhere on the line, repeatable) from ``argv``."""
    plugins, rest, it = [], [], iter(argv)
    for item in it:
        if item == "--plugin":
            plugins.append(next(it, ""))
        elif item.startswith("--plugin="):
            plugins.append(item.split("=", 1)[1])
        else:
            rest.append(item)
    return plugins, rest


def check_out_folder(value: str, option: str = "--out") -> Path:
    """Refuse an output folder that is empty, a file, or not creatable/writable, before any work.

    Nothing is created here: the nearest existing ancestor must be a writable folder."""
    if not value.strip():
        raise GradleakError(f"{option} is empty; give a folder path")
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise GradleakError(f"{option} {value!r} exists and is not a folder")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise GradleakError(f"{option} {value!r} cannot be created: {str(ancestor)!r} is a file")
    try:  # os.access is wrong for root and read-only mounts: try for real
        tempfile.TemporaryDirectory(dir=ancestor, prefix=".gradleak-probe-").cleanup()
    except OSError as exc:
        raise GradleakError(f"{option} {value!r} is not writable: {exc.strerror or exc}") from None
    return path


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; bad input is one ``gradleak: error:`` line and exit code 2."""
    from gradleak.plugins import load_plugins

    warnings.onceregistry.clear()  # "once" is per command, also when main() is called in-process
    with warnings.catch_warnings():
        # Each distinct warning once per command (an audit's scenarios repeat the same notes).
        warnings.simplefilter("once")
        warnings.formatwarning = _one_line_warning
        try:
            plugins, argv = _take_plugins(list(sys.argv[1:] if argv is None else argv))
            load_plugins(plugins)  # they register their names before any config is resolved
            parser = build_parser()
            # Overrides may sit between options (`attack --quiet a=1 --out X b=2`): collect them.
            args, extra = parser.parse_known_args(argv)
            for item in extra:
                if item.startswith("-") or not hasattr(args, "overrides"):
                    raise GradleakError(f"unrecognized argument: {item!r} (see gradleak "
                                        f"{getattr(args, 'command', '')} --help)")
                args.overrides.append(item)
            if getattr(args, "out", None) is not None:
                check_out_folder(args.out)
            return args.func(args)
        except GradleakError as exc:
            print(f"gradleak: error: {_one_line(str(exc))}", file=sys.stderr)
            return 2
        except BrokenPipeError:  # `gradleak ... | head`: the reader left; not an error of ours
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except OSError as exc:  # a file-system problem (disk full, permissions): no traceback
            print(f"gradleak: error: {_one_line(str(exc))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("gradleak: interrupted; finished results are kept (rerun to resume)",
                  file=sys.stderr)
            return 130


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "unknown error"


if __name__ == "__main__":
    sys.exit(main())
