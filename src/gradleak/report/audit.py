"""The audit report: a Markdown and an HTML page over a folder of finished runs."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from gradleak.io import write_text
from gradleak.report.numbers import number
from gradleak.report.plots import png_data_uri

COLUMNS = ("psnr", "ssim", "lpips", "mse", "label_accuracy", "brr", "wsrr")


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
                     + " | ".join(number(m[c]) for c in COLUMNS) + f" | {r['seconds']:.0f} |")
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
        + "".join(f"<td>{number(r['metrics'][c])}</td>" for c in COLUMNS)
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
