"""``gradleak`` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import warnings
from importlib import resources
from pathlib import Path

import yaml

from gradleak.errors import GradleakError


def _load_audit_plan(path: str | None) -> dict:
    if path:
        p = Path(path)
        if not p.is_file():
            raise GradleakError(f"audit plan {str(p)!r} does not exist")
        return yaml.safe_load(p.read_text())
    return yaml.safe_load(resources.files("gradleak").joinpath("configs/audit.yaml").read_text())


def cmd_attack(args: argparse.Namespace) -> int:
    from gradleak.config import load_config
    from gradleak.runner import run_scenario, write_run

    cfg = load_config(args.config, args.overrides)
    run = run_scenario(cfg, progress=not args.quiet)
    path = write_run(args.out, run)
    m = run.result["metrics"]
    print(f"psnr={m['psnr']:.2f} ssim={m['ssim']:.3f} lpips={m['lpips']} "
          f"label_accuracy={m['label_accuracy']:.2f}  ->  {path}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from gradleak.config import load_config
    from gradleak.report.audit import render_audit
    from gradleak.runner import run_scenario, write_run

    plan = _load_audit_plan(args.plan)
    out = Path(args.out)
    scenarios = plan["scenarios"]
    # Validate every scenario before spending minutes on the first one.
    configs = [load_config(None, [f"{k}={v}" for k, v in s.get("set", {}).items()]
                           + list(args.overrides), base=plan.get("base", {}))
               for s in scenarios]
    for i, (scenario, cfg) in enumerate(zip(scenarios, configs, strict=True), 1):
        print(f"[{i}/{len(scenarios)}] {scenario.get('title', scenario['name'])}", flush=True)
        done = out / scenario["name"] / "result.json"
        if not args.rerun and done.is_file():
            previous = json.loads(done.read_text())
            if previous.get("config_digest") == cfg.digest():
                # An interrupted audit resumes: finished scenarios are not redone.
                print("    done before (same config): kept", flush=True)
                continue
        run = run_scenario(cfg, progress=not args.quiet)
        write_run(out / scenario["name"], run)
        m = run.result["metrics"]
        print(f"    psnr={m['psnr']:.2f} dB  lpips={m['lpips']}  ssim={m['ssim']:.3f}", flush=True)
    md, page = render_audit(out, scenarios)
    print(f"report: {page}\n        {md}")
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

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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

    p = sub.add_parser("audit", help="the default audit: several scenarios and a report")
    p.add_argument("--out", default="reports/demo", help="report folder")
    p.add_argument("--plan", help="YAML audit plan (default: the packaged configs/audit.yaml)")
    p.add_argument("--rerun", action="store_true", help="redo scenarios that already finished")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides applied to every scenario")
    p.set_defaults(func=cmd_audit)

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


def main(argv: list[str] | None = None) -> int:
    from gradleak.plugins import load_plugins

    plugins, argv = _take_plugins(list(sys.argv[1:] if argv is None else argv))
    try:  # plug-ins register their names before any config is resolved (docs/extending.md)
        load_plugins(plugins)
    except GradleakError as exc:
        print(f"gradleak: error: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    # Overrides may sit between options (`attack --quiet a=1 --out X b=2`): collect them all.
    args, extra = parser.parse_known_args(argv)
    for item in extra:
        if item.startswith("-") or not hasattr(args, "overrides"):
            parser.error(f"unrecognized argument: {item}")
        args.overrides.append(item)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.formatwarning = _one_line_warning
            return args.func(args)
    except GradleakError as exc:
        print(f"gradleak: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradleak: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
