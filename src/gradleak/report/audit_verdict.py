"""The setup audit's report: ``report.md`` and a self-contained ``index.html`` from the content of
``verdict.json`` (plain data: this module reads no store). The verdict comes first, then the
levels, the recommendation, the vulnerable layers, and per level the best reconstruction beside
its original."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from gradleak.io import write_text
from gradleak.report.numbers import number
from gradleak.report.plots import png_data_uri


def _num(value: Any, digits: int = 3) -> str:
    return number(value, digits)


def _share(value: Any) -> str:
    return "null" if value is None else f"{100 * value:.0f} %"


def _bound(lv: dict[str, Any]) -> str:
    b = lv.get("bound") or {}
    if "lower" not in b:
        return "-"
    return f"[{_share(b['lower'])}, {_share(b['upper'])}]"


def level_rows(verdict: dict[str, Any]) -> list[list[str]]:
    """The levels table: one row of cells per level."""
    rows = []
    for lv in verdict["levels"]:
        best = lv.get("best") or {}
        runs = lv.get("runs", lv.get("seeds", 0))
        per = lv.get("samples", 0) // max(1, runs or 1)
        rows.append([str(lv["level"]), lv["title"], lv["server"], f"**{lv['verdict']}**",
                     f"{lv.get('runs_leaked', 0)} of {runs}" if runs else "-", _bound(lv),
                     _share(lv.get("leaked_share")), _share(lv.get("at_risk_share")),
                     f"{runs} x {per}",
                     (f"{_num(best.get('rouge1'))} / {_num(best.get('semantic'))}"
                      if "rouge1" in best else
                      f"{_num(best.get('lpips'))} / {_num(best.get('psnr'))}"),
                     (lv.get("reason") or "") + (f"; {lv['suggest']}" if lv.get("suggest") else "")])
    return rows


LEVEL_HEAD = ["level", "server knows", "server", "verdict", "runs leaked", "run leak rate (95 %)",
              "samples leaked", "samples at risk", "runs x samples", "best LPIPS / PSNR", "why"]


def _against(p: dict[str, Any]) -> str:
    """What the adaptive attackers did to setting ``p``: broke it, or held in its screen."""
    if p.get("broken_by"):
        attacks = p.get("broken_by_attack") or []
        return (f" (broken by {', '.join(attacks)}: {', '.join(p['broken_by'])})" if attacks
                else f" (broken by {', '.join(p['broken_by'])})")
    labels = p.get("attackers") or []
    named = dict(zip(labels, p.get("attacks") or labels, strict=False))
    adaptive = [f"{named.get(a, a)}: {a}" for a in labels if a.endswith("+adaptive")]
    if adaptive and p.get("verdict") == "inconclusive":
        return f" (held against {', '.join(adaptive)} in {p.get('runs', '?')} runs)"
    return ""


def recommendation_lines(verdict: dict[str, Any]) -> list[str]:
    """The recommendation and the vulnerable layers, as Markdown lines."""
    rec = verdict.get("recommendation") or {}
    lines = ["## Recommendation", ""]
    if rec.get("status") in ("not needed", "not run"):
        return [*lines, f"{rec['status']}: {rec.get('reason', '')}", ""]
    unit = "accuracy drop (points)" if rec.get("cost") == "accuracy_drop" else "distortion"
    choice = rec.get("choice")
    foes = ", ".join(rec.get("attackers") or [rec.get("attack") or "?"])
    lines.append(f"**{rec['status']}**: {rec.get('reason', '')}. A setting is screened by the "
                 "plain attack of the strongest leaking level on one round of runs (a leak "
                 "rejects it); a passing one is confirmed against every leaking level, "
                 f"non-adaptive and adaptive where possible ({foes}), and a run leaks when any "
                 "of them leaks (column `confirmed`); a heuristic that a published attack "
                 "breaks meets that attack on its screened runs either way. Undefended accuracy: "
                 f"{_share(rec.get('accuracy_without_defense'))}.")
    for brk in rec.get("monotonic_breaks") or []:
        lines.append(f"Not monotonic: {brk}.")
    for p in rec.get("settings", []):
        if p.get("epsilon") is not None:
            lines.append(f"{p['key']}: client-level DP-SGD with ε = {p['epsilon']:.3g} "
                         "(the largest client's, RDP accountant) over the utility trainings.")
        elif p.get("defense") == "dpsgd":  # ε comes from the utility trainings, never guessed
            lines.append(f"{p['key']}: ε not computed: only a setting that passes the screen "
                         "gets the utility trainings it is read from.")
    if choice is None and rec.get("best_available"):
        b = rec["best_available"]
        lines.append(f"Best available: {b['key']} ({b['verdict']}, runs leaked "
                     f"{_share(b.get('run_leak_rate'))}, cost {_num(b.get('cost'))}).")
    lines += ["", f"| setting | verdict | confirmed | runs leaked | run leak rate (95 %) | {unit} "
              "| interval | pairs | resolution (points) |", "|---|---|---|---|---|---|---|---|---|"]
    for p in rec.get("settings", []):
        ci = p.get("accuracy_drop_interval")
        ci_text = f"[{_num(ci[0])}, {_num(ci[1])}]" if ci else "-"
        shown = p["verdict"] + _against(p)
        lines.append(f"| {p['key']} | {shown} | {'yes' if p.get('confirmed') else 'no'} "
                     f"| {p.get('runs_leaked', '?')} of "
                     f"{p.get('runs', '?')} | {_bound(p)} | {_num(p.get('cost'))} | {ci_text} | "
                     f"{p.get('pairs', '-')} | {_num(p.get('resolution_points'))} |")
    layers = verdict.get("vulnerable_layers") or {}
    if layers:
        lines += ["", "## Most vulnerable layers", "",
                  f"Each layer's gradient alone, attacked at {layers.get('attack')}: "
                  f"{', '.join(layers.get('suffices') or []) or 'no single layer'} suffices to leak.",
                  "", "| layer | parameters | verdict | runs leaked |", "|---|---|---|---|"]
        lines += [f"| {r['layer']} | {r['parameters']} | {r['verdict']} | "
                  f"{r.get('runs_leaked', '?')} of {r.get('runs', '?')} |"
                  for r in layers.get("layers", [])]
        lines += ["", f"Defending only these layers: {layers.get('defend_only_these')}."]
    return [*lines, ""]


def markdown(verdict: dict[str, Any]) -> str:
    """``report.md``."""
    t = verdict["thresholds"]
    trials = verdict.get("trials") or {}
    mal = verdict.get("malicious_reference")
    lines = [f"# gradleak audit: {verdict['verdict']}", "",
             f"**Verdict (honest-but-curious server, levels 0-1): {verdict['verdict']}.** "
             f"Worst case (honest-but-curious levels 0-4): {verdict['worst_case']}, "
             f"{verdict['summary']}.", "",
             *([f"In plain words: {verdict['plain']}", ""] if verdict.get("plain") else []),
             f"What this shows: {verdict.get('claim', verdict['summary'])}.", "",
             *([f"Malicious reference (level 5, a server that tampers with the model; not part "
                f"of the verdict): {mal}.", ""] if mal else []),
             *setup_lines(verdict), criterion(t) + " A run leaks when one of its samples "
             "leaks; the verdict is over runs"
             + (f" ({trials['note']})" if trials.get("note") else "") + ". Rule: docs/audit.md.",
             "",
             "| " + " | ".join(head(t)) + " |", "|" + "---|" * len(LEVEL_HEAD)]
    lines += ["| " + " | ".join(row) + " |" for row in level_rows(verdict)]
    lines += ["", *recommendation_lines(verdict)]
    for lv in verdict["levels"]:
        best = lv.get("best") or {}
        if best.get("original") is not None:
            lines += [f"## {lv['title']}", "", *sentence_lines(best), ""]
        if best.get("image"):
            lines += [f"## {lv['title']}", "", f"![{lv['name']}]({best['image']})", "",
                      f"Best sample (seed {best['seed']}): original (left), reconstruction "
                      f"(right); LPIPS {_num(best.get('lpips'))}, PSNR {_num(best.get('psnr'))} "
                      f"dB. {baseline_text(best)}All samples: {best['reconstruction_grid']}.", ""]
    return "\n".join(lines)


def criterion(t: dict[str, Any]) -> str:
    """The leak criterion in force, one sentence (images or text)."""
    if "rouge1" in t:
        return (f"A sentence is *leaked* when ROUGE-1 >= {t['rouge1']} and semantic similarity "
                f">= {t['semantic']} AND it beats the closest update-free sentence of a reference "
                "pool from the same distribution; *at risk* (either threshold) is description "
                "only.")
    return (f"A sample is *leaked* when PSNR >= {t['psnr']} dB and LPIPS <= {t['lpips']} (paper "
            "App. C) AND it beats every update-free baseline (its flat mean colour, the data's "
            "mean image, the nearest other sample) and is identified among distractors; *at "
            "risk* (either threshold) is description only.")


def head(t: dict[str, Any]) -> list[str]:
    """The levels table's header (its best-sample column names the modality's metrics)."""
    return [*LEVEL_HEAD[:-2], "best ROUGE-1 / semantic" if "rouge1" in t else LEVEL_HEAD[-2],
            LEVEL_HEAD[-1]]


def sentence_lines(best: dict[str, Any]) -> list[str]:
    """A text level's best sentence beside its original, the words recovered in place (in
    order, :func:`gradleak.text_view.word_marks`) in bold."""
    from gradleak.text_view import word_marks

    words, _ = word_marks(str(best["original"]), str(best.get("reconstruction") or ""))
    marked = " ".join(f"**{w}**" if hit else w for w, hit in words)
    ref = (best.get("baselines") or {}).get("reference") or {}
    return [f"Best sentence (seed {best['seed']}), ROUGE-1 {_num(best.get('rouge1'))}, semantic "
            f"{_num(best.get('semantic'))}; the closest update-free sentence scores ROUGE-1 "
            f"{_num(ref.get('rouge1'))}, semantic {_num(ref.get('semantic'))}.", "",
            f"- original (recovered words in bold): {marked}",
            f"- reconstruction: {best.get('reconstruction')}"]


def setup_lines(verdict: dict[str, Any]) -> list[str]:
    """What was audited, in one paragraph."""
    st, bd = verdict.get("setup") or {}, verdict.get("budget") or {}
    attack = bd.get("effective") or bd.get("attack") or {}
    keys = ("model", "dataset", "resolution", "num_samples", "protocol", "optimizer", "lr",
            "momentum", "batch_size", "local_epochs", "augment", "batchnorm")
    if st.get("modality") == "text":
        keys = ("model", "dataset", "max_length", "num_samples", "protocol", "optimizer", "lr",
                "momentum", "batch_size", "local_epochs", "lora_rank", "frozen")
    audited = ", ".join(f"{k} {st[k]}" for k in keys if st.get(k) is not None)
    return [f"Audited: {audited}. Budget {bd.get('name')}: {attack.get('iterations')} iterations x "
            f"{attack.get('restarts', 1)} restarts, rounds of {bd.get('round_size', '?')} runs up "
            f"to {bd.get('max_seeds', '?')} per level.", "", *identity_lines(st, bd)]


def identity_lines(st: dict[str, Any], bd: dict[str, Any]) -> list[str]:
    """The model, data, levels, seeds and version audited (``setup``'s self-description)."""
    if not st.get("model_class"):
        return []
    model = (f"Model: {st.get('model')} ({st['model_class']}), {st.get('parameters', '?'):,} "
             "parameters"
             + (f", file {st['model_file']}" if st.get("model_file") else "")
             + (f", checkpoint {st['checkpoint']}" if st.get("checkpoint") else ", no checkpoint "
                "(weights drawn from the seed)"))
    data = st.get("data") or {}
    shape = (f"max_length {data.get('max_length')}" if data.get("modality") == "text" else
             f"{data.get('channels', '?')} channel(s), {data.get('resolution', '?')} px")
    parts = [f"Data: {data.get('name', st.get('dataset'))}"
             + (f" ({st['data_root']})" if st.get("data_root") else ""),
             f"{data.get('size', '?')} samples, {data.get('classes', '?')} classes, {shape}"]
    for key, label in (("split", "split"), ("transform", "decoding")):
        if data.get(key):
            parts.append(f"{label}: {data[key]}")
    norm = data.get("normalization")
    if isinstance(norm, dict):
        parts.append("normalisation: " + ", ".join(
            f"{k} [{', '.join(f'{v:.3g}' for v in vals)}]" for k, vals in norm.items()
            if isinstance(vals, (list, tuple))))
    return [f"{model}. {'; '.join(parts)}. Levels run: "
            f"{', '.join(st.get('levels_run') or []) or 'none'}; seeds "
            f"{bd.get('seeds')}; gradleak {st.get('gradleak_version', '?')}.", ""]


BASELINE_NAMES = {"flat": "flat mean colour", "data_mean": "data mean image",
                  "nearest_other": "nearest other sample"}


def baseline_text(best: dict[str, Any]) -> str:
    """What an attacker gets without the update, for the best sample (the leak criterion's
    baselines), as one sentence."""
    parts = [f"{BASELINE_NAMES.get(k, k)} {_num(v.get('lpips'))} / {_num(v.get('psnr'))} dB"
             for k, v in (best.get("baselines") or {}).items()]
    return f"Without the update (LPIPS / PSNR): {'; '.join(parts)}. " if parts else ""


def _inline(root: Path, rel: str | None) -> str:
    path = root / rel if rel else None
    if path is None or not path.is_file():
        return ""
    return png_data_uri(path)


def page(root: Path, verdict: dict[str, Any], md: str) -> str:
    """``index.html``: the Markdown's content, tables as HTML, images inlined."""
    parts, table = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            if not set(line) <= set("|-"):
                cells = [html.escape(c.strip().strip("*")) for c in line.strip("|").split("|")]
                tag = "th" if not table else "td"
                table.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if table:
            parts.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.startswith("!["):
            name, rel = line[2:].split("](", 1)
            parts.append(f"<img alt='{html.escape(name)}' src='{_inline(root, rel[:-1])}'>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            parts.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.strip():
            text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(line))
            text = re.sub(r"\*(.+?)\*", r"<i>\1</i>", text)
            parts.append(f"<p>{text}</p>")
    if table:
        parts.append("<table>" + "".join(table) + "</table>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>gradleak audit: \
{html.escape(verdict['verdict'])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}
img{{image-rendering:pixelated}}</style></head><body>{''.join(parts)}</body></html>
"""


def render_verdict(root: str | Path, verdict: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report.md`` and ``index.html`` into ``root``."""
    root = Path(root)
    md = markdown(verdict)
    write_text(root / "report.md", md)
    write_text(root / "index.html", page(root, verdict, md))
    return root / "report.md", root / "index.html"
