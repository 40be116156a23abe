"""The audit report: a Markdown and an HTML page over a folder of finished runs."""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from gradleak.errors import GradleakError
from gradleak.io import write_text
from gradleak.report.plots import png_data_uri

# A scenario name becomes a folder under --out: one path component, no traversal.
SCENARIO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
PLAN_KEYS = {"base", "scenarios", "title", "description"}
SCENARIO_KEYS = {"name", "title", "set"}


def load_audit_plan(path: str | Path | None) -> dict[str, Any]:
    """Read and validate an audit plan (default: the packaged ``configs/audit.yaml``).

    A plan is ``{base: {section: {key: value}}, scenarios: [{name, title?, set?: {dotted.key:
    value}}]}``; every problem is one GradleakError before any scenario runs."""
    if path is None:
        where = "the packaged audit plan"
        text = resources.files("gradleak").joinpath("configs/audit.yaml").read_text()
    else:
        where = f"audit plan {str(path)!r}"
        p = Path(path)
        if not p.is_file():
            raise GradleakError(f"{where} does not exist (or is not a file)")
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise GradleakError(f"{where} cannot be read as text: {exc}") from None
    try:
        plan = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0]
        raise GradleakError(f"{where} is not valid YAML: {first}") from None
    validate_plan(plan, where)
    return plan


def validate_plan(plan: Any, where: str = "audit plan") -> None:
    """One-line errors for a malformed plan; see :func:`load_audit_plan`."""
    if not isinstance(plan, dict):
        raise GradleakError(f"{where} must be a mapping with 'scenarios' (and optional 'base'), "
                            f"got {type(plan).__name__ if plan is not None else 'an empty file'}")
    unknown = sorted(map(str, set(plan) - PLAN_KEYS))
    if unknown:
        raise GradleakError(f"{where}: unknown keys {unknown}; allowed: {sorted(PLAN_KEYS)}")
    if not isinstance(plan.get("base", {}), dict):
        raise GradleakError(f"{where}: 'base' must be a mapping of config sections")
    scenarios = plan.get("scenarios")
    if not isinstance(scenarios, list) or not scenarios:
        raise GradleakError(f"{where} needs 'scenarios': a non-empty list of "
                            "{name, title, set} mappings")
    seen: set[str] = set()
    for i, s in enumerate(scenarios, 1):
        if not isinstance(s, dict):
            raise GradleakError(f"{where}: scenario {i} must be a mapping with 'name', got "
                                f"{type(s).__name__}")
        unknown = sorted(map(str, set(s) - SCENARIO_KEYS))
        if unknown:
            raise GradleakError(f"{where}: scenario {i} has unknown keys {unknown}; allowed: "
                                f"{sorted(SCENARIO_KEYS)}")
        name = s.get("name")
        if not isinstance(name, str) or not SCENARIO_NAME.fullmatch(name) or name.strip(".") == "":
            raise GradleakError(f"{where}: scenario {i} name {name!r} must be letters, digits, "
                                "'_', '-' or '.' (one folder name, not a path)")
        if name in seen:
            raise GradleakError(f"{where}: scenario name {name!r} is used twice; names must be "
                                "unique (each is a folder)")
        seen.add(name)
        if not isinstance(s.get("title", name), str):
            raise GradleakError(f"{where}: scenario {name!r} title must be text")
        if not isinstance(s.get("set", {}), dict):
            raise GradleakError(f"{where}: scenario {name!r} 'set' must be a mapping of "
                                "dotted.key: value, got a list" if isinstance(s.get("set"), list)
                                else f"{where}: scenario {name!r} 'set' must be a mapping of "
                                "dotted.key: value")

COLUMNS = ("psnr", "ssim", "lpips", "mse", "label_accuracy", "brr", "wsrr")


def _fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def load_runs(root: Path, names: list[str]) -> list[tuple[str, dict[str, Any]]]:
    runs = []
    for name in names:
        path = root / name / "result.json"
        if path.is_file():
            runs.append((name, json.loads(path.read_text())))
    return runs


def render_audit(root: str | Path, scenarios: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``report.md`` and ``index.html`` into ``root`` from ``root/<name>/result.json``."""
    root = Path(root)
    titles = {s["name"]: s.get("title", s["name"]) for s in scenarios}
    runs = load_runs(root, [s["name"] for s in scenarios])
    any_run = runs[0][1] if runs else {}
    thresholds = any_run.get("thresholds", {"psnr": 18.0, "lpips": 0.1})

    header = "| scenario | U | " + " | ".join(COLUMNS) + " | seconds |"
    lines = [
        "# gradleak audit",
        "",
        "A sample counts as leaked when PSNR >= {psnr} dB and LPIPS <= {lpips} (paper App. C)."
        .format(**thresholds),
        "",
        header,
        "|" + "---|" * (len(COLUMNS) + 3),
    ]
    for name, r in runs:
        m = r["metrics"]
        lines.append(f"| {titles[name]} | {r['scenario']['local_updates']} | "
                     + " | ".join(_fmt(m[c]) for c in COLUMNS) + f" | {r['seconds']:.0f} |")
    lines.append("")
    for name, r in runs:
        lines += [f"## {titles[name]}", "", f"![{name}]({name}/reconstruction.png)", "",
                  "Top: the client's private images. Bottom: the server's reconstruction.", ""]
        lines += [f"- warning: {w}" for w in r.get("warnings", [])]
        lines.append("")
    md = root / "report.md"
    write_text(md, "\n".join(lines))

    rows = "".join(
        f"<tr><td>{html.escape(titles[name])}</td><td>{r['scenario']['local_updates']}</td>"
        + "".join(f"<td>{_fmt(r['metrics'][c])}</td>" for c in COLUMNS)
        + f"<td>{r['seconds']:.0f}</td></tr>"
        for name, r in runs
    )
    figures = "".join(
        f"<figure><img alt='{name}' src='{png_data_uri(root / name / 'reconstruction.png')}'>"
        f"<figcaption>{html.escape(titles[name])}: private images (top), reconstruction "
        f"(bottom)</figcaption></figure>"
        for name, _ in runs if (root / name / "reconstruction.png").is_file()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>gradleak audit</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child{{text-align:left}}img{{image-rendering:pixelated}}</style></head><body>
<h1>gradleak audit</h1><p>A sample counts as leaked when PSNR &ge; {thresholds['psnr']} dB and
LPIPS &le; {thresholds['lpips']} (paper App. C).</p>
<table><tr><th>scenario</th><th>U</th>{''.join(f'<th>{c}</th>' for c in COLUMNS)}
<th>seconds</th></tr>{rows}</table>{figures}</body></html>
"""
    page_path = root / "index.html"
    write_text(page_path, page)
    return md, page_path
