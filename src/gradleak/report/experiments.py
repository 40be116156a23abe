"""``gradleak report DIR``: one self-contained HTML page over a sweep folder's stored results.

For each experiment (and profile) in ``DIR/results.sqlite``: the paper's insight and our
verdict on it, our table laid out like the paper's (mean +- std over seeds), the paper's
published numbers beside it, matplotlib plots and a grid of reconstructions (truth above
reconstruction), all embedded as data URIs: the page opens offline and needs no CDN.
"""

from __future__ import annotations

import base64
import html
import io
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from gradleak.errors import GradleakError
from gradleak.io import write_text
from gradleak.report.numbers import mean_spread
from gradleak.report.plots import png_data_uri, tradeoff_figure
from gradleak.report.verdicts import REPORTED_METRICS, judge, threshold
from gradleak.report.verdicts import number as _num

REPORT_NAME = "report.html"
VERDICTS_NAME = "verdicts.json"  # every verdict with its evidence, for scripts
MAX_IMAGES = 24
_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h2{border-top:2px solid #ccc;padding-top:1em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #bbb;padding:.25em .5em;text-align:right}
th{background:#f2f2f2} td:first-child,th:first-child{text-align:left}
.verdict{padding:.5em 1em;border-left:6px solid #999;background:#f8f8f8;margin:.5em 0}
.supported{border-color:#2a2} .inconclusive{border-color:#d90} .contradicted{border-color:#c22}
.evidence{font-size:.85em;color:#555;margin-top:.3em}
blockquote{font-style:italic;color:#444;margin:.5em 1em}
figure{display:inline-block;margin:.3em;text-align:center;font-size:.75em;vertical-align:top}
figure img{image-rendering:pixelated;height:128px}
.plot img{max-width:100%} .muted{color:#777;font-size:.85em}
"""
# Counts images Chromium actually decoded: a headless test reads it from the dumped DOM.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute('data-images-loaded', ok);
  document.body.setAttribute('data-tables', document.getElementsByTagName('table').length);
});
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _cell(values: list[float]) -> str:
    return mean_spread(values)


def derive(rows: list[dict[str, Any]]) -> None:
    """Add ``accuracy_drop`` (points vs the undefended run with the same seed) and, for causal
    LMs, ``perplexity_increase`` (percent vs that run's held-out perplexity) where possible."""
    # The reference: the variant named "none" where there is one (a model switch such as
    # PRECODE also runs with defense.name=none, and its cost is measured against the plain model).
    refs = ([r for r in rows if r.get("variant") == "none"]
            or [r for r in rows if r.get("defense.name") == "none"])
    base = {r["seed"]: r["final_accuracy"] for r in refs
            if _num(r.get("final_accuracy")) is not None}
    ppl = {r["seed"]: r["final_perplexity"] for r in refs if _num(r.get("final_perplexity"))}
    for r in rows:
        acc = _num(r.get("final_accuracy"))
        if acc is not None and r["seed"] in base:
            r["accuracy_drop"] = round(100.0 * (base[r["seed"]] - acc), 3)
        value = _num(r.get("final_perplexity"))
        if value is not None and r["seed"] in ppl:
            r["perplexity_increase"] = round(100.0 * (value / ppl[r["seed"]] - 1.0), 3)


def _label(row: dict[str, Any], key: str, names: dict[str, dict[str, str]]) -> str:
    value = row.get("variant") if key == "variant" else row.get(key)
    text = str(value)
    return names.get(key, {}).get(text, text)


def _pivot(rows: list[dict[str, Any]], table: dict[str, Any], metric: str,
           names: dict[str, dict[str, str]]) -> str:
    cols_key = table.get("cols", "variant")
    row_keys = list(table.get("rows") or [])
    if cols_key != "variant" and "variant" not in row_keys:
        row_keys = ["variant", *row_keys]
    cells: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    col_order: dict[str, float | str] = {}
    for r in rows:
        rk = tuple(_label(r, k, names) for k in row_keys)
        ck = _label(r, cols_key, names)
        raw = r.get(cols_key)
        col_order.setdefault(ck, raw if isinstance(raw, (int, float)) else len(col_order))
        v = _num(r.get(metric))
        cells[rk][ck]  # keep rows whose metric is missing visible
        if v is not None:
            cells[rk][ck].append(v)
    cols = sorted(col_order, key=lambda c: col_order[c])
    head = "".join(f"<th>{_e(k)}</th>" for k in row_keys) + "".join(
        f"<th>{_e(cols_key)}={_e(c)}</th>" if cols_key != "variant" else f"<th>{_e(c)}</th>"
        for c in cols)
    body = ""
    for rk, by_col in cells.items():
        body += "<tr>" + "".join(f"<td>{_e(x)}</td>" for x in rk) + "".join(
            f"<td>{_cell(by_col.get(c, []))}</td>" for c in cols) + "</tr>"
    info = REPORTED_METRICS.get(metric)
    caption = (f"<caption class='muted'>{_e(metric)} (mean ± std over seeds; {info.direction} = "
               "more leakage)</caption>" if info is not None else
               f"<caption class='muted'>{_e(metric)} (mean ± std over seeds)</caption>")
    return f"<table>{caption}<tr>{head}</tr>{body}</table>"


def _paper(paper: dict[str, Any] | None) -> str:
    if not paper:
        return "<p class='muted'>The paper publishes no numbers for this experiment.</p>"
    out = f"<p><b>Paper:</b> {_e(paper.get('source', ''))}</p>"
    if paper.get("columns"):
        head = "".join(f"<th>{_e(c)}</th>" for c in paper["columns"])
        body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>"
                       for row in paper.get("rows", []))
        out += f"<table><tr>{head}</tr>{body}</table>"
    if paper.get("note"):
        out += f"<p class='muted'>Paper's finding: {_e(paper['note'])}</p>"
    return out


def _line_plot(rows: list[dict[str, Any]], plot: dict[str, Any]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key, metrics = plot["x"], [plot["y"], *plot.get("also", [])]
    series_key, panel_key = plot.get("series", "variant"), plot.get("panels")
    panels = sorted({r.get(panel_key) for r in rows}, key=str) if panel_key else [None]
    fig, axes = plt.subplots(len(metrics), len(panels), squeeze=False,
                             figsize=(4.2 * len(panels), 3.0 * len(metrics)))
    drawn = False
    for j, panel in enumerate(panels):
        mine = [r for r in rows if panel_key is None or r.get(panel_key) == panel]
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            groups: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
            for r in mine:
                x, y = _num(r.get(x_key)), _num(r.get(metric))
                if x is not None and y is not None:
                    groups[str(r.get(series_key))][x].append(y)
            for name, by_x in groups.items():
                xs = sorted(by_x)
                ys = [statistics.fmean(by_x[x]) for x in xs]
                es = [statistics.stdev(by_x[x]) if len(by_x[x]) > 1 else 0.0 for x in xs]
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=name)
                drawn = True
            _threshold_line(ax.axhline, rows, metric)
            ax.set_xlabel(x_key)
            ax.set_ylabel(metric)
            if panel_key:
                ax.set_title(f"{panel_key}={panel}", fontsize=9)
            if groups:
                ax.legend(fontsize=7)
    return _png(fig) if drawn else None


def _bar_plot(rows: list[dict[str, Any]], metric: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        v = _num(r.get(metric))
        if v is not None:
            label = r["variant"] + (f" / {r['model.name']}" if len({x.get('model.name')
                                                                   for x in rows}) > 1 else "")
            groups[label].append(v)
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(groups) + 1), 3.2))
    names = list(groups)
    ax.bar(range(len(names)), [statistics.fmean(groups[n]) for n in names],
           yerr=[statistics.stdev(groups[n]) if len(groups[n]) > 1 else 0 for n in names], capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    _threshold_line(ax.axhline, rows, metric)
    return _png(fig)


def _threshold_line(draw: Any, rows: list[dict[str, Any]], metric: str) -> None:
    """The leakage threshold of ``metric`` (if it has one) as a dashed red line."""
    limit = threshold(rows, metric)
    if limit is not None:
        draw(limit, color="red", lw=0.8, ls="--")


def _tradeoff_plot(rows: list[dict[str, Any]], max_drop: float = 5.0) -> str | None:
    """Fig. 11 over stored rows: :func:`gradleak.report.plots.tradeoff_figure` (one definition),
    one point per run, labelled by its variant."""
    points = [{"defense": str(r.get("defense.name")), "label": r.get("variant"),
               "lpips": _num(r.get("lpips")), "accuracy_drop": _num(r.get("accuracy_drop"))}
              for r in rows]
    limit = threshold(rows, "lpips")
    fig = tradeoff_figure(points, max_drop=max_drop,
                          **({"lpips_threshold": limit} if limit is not None else {}))
    return None if fig is None else _png(fig)


def _images(rows: list[dict[str, Any]], root: Path, table: dict[str, Any],
            names: dict[str, dict[str, str]]) -> str:
    keys = ["variant", *(table.get("rows") or []), table.get("cols", "variant")]
    keys = list(dict.fromkeys(keys))
    seen, figs = set(), []
    for r in sorted(rows, key=lambda r: r["seed"]):
        cell = tuple(_label(r, k, names) for k in keys)
        path = root / "runs" / r["run_id"] / "reconstruction.png"
        if cell in seen or not path.is_file():
            continue
        seen.add(cell)
        metric = table.get("metric", "lpips")
        v = _num(r.get(metric))
        caption = " · ".join(cell) + (f"<br>{metric} {v:.3g}" if v is not None else "")
        figs.append(f"<figure><img alt='{_e(' '.join(cell))}' src='{png_data_uri(path)}'>"
                    f"<figcaption>{caption}</figcaption></figure>")
        if len(figs) >= MAX_IMAGES:
            break
    if not figs:
        return ""
    return ("<p class='muted'>Reconstructions (first seed; top row truth, bottom row "
            "reconstruction):</p>" + "".join(figs))


# The stored plan's parts the report reads, and the type each must have (checked in this order,
# so a part's parent is known to be a mapping). Lists marked ``str`` hold names.
_PLAN_SHAPE: tuple[tuple[str, type, type | None], ...] = (
    ("spec", dict, None), ("runs", list, dict), ("spec.table", dict, None),
    ("spec.names", dict, dict), ("spec.plot", dict, None), ("spec.paper", dict, None),
    ("spec.table.cols", str, None), ("spec.table.metric", str, None),
    ("spec.table.rows", list, str), ("spec.table.also", list, str), ("spec.plot.x", str, None),
    ("spec.plot.y", str, None), ("spec.plot.also", list, str), ("spec.plot.series", str, None),
    ("spec.paper.columns", list, None), ("spec.paper.rows", list, list),
)


def _plan(root: Path, experiment: str, profile: str) -> dict[str, Any]:
    """The plan the sweep stored beside its results; one line when it cannot be what it was."""
    path = root / "plans" / f"{experiment}-{profile}.yaml"
    if not path.is_file():
        return {}
    fix = "delete it, or rerun `gradleak experiment run` to rewrite it"
    try:
        plan = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GradleakError(f"stored plan {path} is not valid YAML ({first}); {fix}") from None
    if not isinstance(plan, dict):
        raise GradleakError(f"stored plan {path} holds a {type(plan).__name__}, not a mapping "
                            f"(title, spec, runs); {fix}")
    for key, kind, item in _PLAN_SHAPE:
        *parents, last = key.split(".")
        node: Any = plan
        for part in parents:
            node = node.get(part) or {}
        value = node.get(last)
        bad = value is not None and not isinstance(value, kind) or (
            item is not None and value and any(
                not isinstance(v, item) for v in (value.values() if kind is dict else value)))
        if bad:
            want = kind.__name__ + (f" of {item.__name__}" if item else "")
            raise GradleakError(f"stored plan {path}: {key} must be a {want}, got {value!r:.60}; {fix}")
    if any(not isinstance(r.get("run_id"), str) for r in plan.get("runs") or []):
        raise GradleakError(f"stored plan {path}: every run needs a run_id; {fix}")
    return plan


def _section(root: Path, experiment: str, profile: str, rows: list[dict[str, Any]],
             found: list[dict[str, Any]]) -> str:
    """The HTML of one experiment; appends its verdicts (as dicts) to ``found``."""
    plan = _plan(root, experiment, profile)
    spec = plan.get("spec") or {}
    title = plan.get("title", experiment)
    # Only the runs of the latest plan: rows stored under other settings or overrides would
    # mix two grids in one table.
    planned_ids = {r["run_id"] for r in plan.get("runs") or []}
    stale = [r for r in rows if planned_ids and r["run_id"] not in planned_ids]
    rows = [r for r in rows if not planned_ids or r["run_id"] in planned_ids]
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    derive(ok)
    table = spec.get("table") or {"cols": "variant", "metric": "lpips"}
    names = spec.get("names") or {}
    metric = table.get("metric", "lpips")
    planned = len(plan.get("runs") or []) or len(rows)
    parts = [f"<h2 id='{_e(experiment)}'>{_e(title)}</h2>",
             f"<p>{_e(plan.get('tests', ''))}<br><span class='muted'>profile <b>{_e(profile)}</b>: "
             f"{len(ok)} of {planned} runs finished, {len(failed)} failed"
             + (f"; {len(stale)} stored runs of earlier settings not shown" if stale else "")
             + ".</span></p>"]
    if plan.get("insight"):
        parts.append(f"<blockquote>{_e(plan['insight'])}</blockquote>")
    try:
        verdicts = judge(ok, spec.get("verdict"))
    except GradleakError as e:
        verdicts = []
        parts.append(f"<p class='muted'>verdict not computed: {_e(e)}</p>")
    found.append({"experiment": experiment, "profile": profile,
                  "verdicts": [v.to_dict() for v in verdicts]})
    for v in verdicts:
        parts.append(f"<div class='verdict {_e(v.status)}'><b>Our data: {_e(v.status)}.</b> "
                     f"{_e(v.statement)}<div class='evidence'>Evidence: {_e(v.evidence)}"
                     "</div></div>")
    parts.append("<h3>Ours</h3>")
    if ok:
        parts.append(_pivot(ok, table, metric, names))
        for extra in table.get("also", []):
            parts.append(_pivot(ok, table, extra, names))
    else:
        parts.append("<p>No finished runs yet.</p>")
    parts.append("<h3>Paper</h3>" + _paper(spec.get("paper")))
    plot = spec.get("plot") or {}
    src = (_tradeoff_plot(ok) if plot.get("kind") == "tradeoff" else
           _line_plot(ok, plot) if plot.get("x") else _bar_plot(ok, metric))
    if src:
        parts.append(f"<div class='plot'><img alt='plot of {_e(experiment)}' src='{src}'></div>")
    parts.append(_images(ok, root, table, names))
    if failed:
        items = "".join(f"<li>{_e(r['variant'])} {_e(r.get('labels'))} seed {r['seed']}: "
                        f"{_e(r.get('error'))}</li>" for r in failed)
        parts.append(f"<h3>Failed runs</h3><ul>{items}</ul>")
    return "\n".join(p for p in parts if p)


def render_report(folder: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``folder/report.html`` (and ``folder/verdicts.json``) for the stored ``rows`` of the
    sweep in ``folder`` (its results store's rows; the command reads them); returns the page."""
    root = Path(folder)
    by_exp: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_exp[(r["experiment"], r["profile"])].append(r)
    toc = "".join(f"<li><a href='#{_e(e)}'>{_e(e)}</a> ({_e(p)}, {len(rs)} runs)</li>"
                  for (e, p), rs in by_exp.items())
    found: list[dict[str, Any]] = []
    sections = [_section(root, e, p, rs, found) for (e, p), rs in by_exp.items()]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>gradleak report</title>"
            f"<style>{_CSS}</style><script>{_SCRIPT}</script></head><body>"
            f"<h1>gradleak: experiments report</h1><p class='muted'>{_e(root.resolve())} · "
            f"{len(rows)} stored runs</p><ul>{toc}</ul>" + "\n".join(sections)
            + "</body></html>")
    write_text(root / VERDICTS_NAME, json.dumps(found, indent=1))
    out = root / REPORT_NAME
    write_text(out, page)
    return out
