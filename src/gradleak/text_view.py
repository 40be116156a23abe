"""Side-by-side views of a text reconstruction: ``reconstruction.md`` and ``reconstruction.html``.

Words are aligned with :class:`difflib.SequenceMatcher` (longest matching blocks, in order):
a reconstructed word inside a matching block was recovered in place (marked), any other
reconstructed word was not; a word of the original that no block covers was missed. Private
strings (names, numbers, dates) of the original are flagged recovered or not.
"""

from __future__ import annotations

import difflib
import html
from typing import Any

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:.4em;vertical-align:top}
.hit{background:#c8f7c5}.miss{background:#f7c5c5;text-decoration:line-through}
.lost{color:#999}.pii{font-weight:bold}.num{white-space:nowrap}"""


def word_marks(original: str, reconstruction: str) -> tuple[list[tuple[str, bool]],
                                                              list[tuple[str, bool]]]:
    """``(original words, reconstructed words)``, each word with whether it lies in a block the
    two texts share (in order)."""
    a, b = original.split(), reconstruction.split()
    hit_a, hit_b = [False] * len(a), [False] * len(b)
    for block in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            hit_a[block.a + k], hit_b[block.b + k] = True, True
    return list(zip(a, hit_a, strict=True)), list(zip(b, hit_b, strict=True))


def _fmt(value: Any) -> str:
    return "null" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def _metric_cells(per_sample: dict[str, list], i: int, keys: tuple[str, ...]) -> list[str]:
    # A bag attack (token-set) has no per-sentence values: its lists are null.
    return [_fmt(col[i]) if isinstance(col := per_sample.get(k), list) and i < len(col)
            else "null" for k in keys]


KEYS = ("rouge1", "rouge2", "semantic", "critical_recall", "leaked")


def render_markdown(result: dict[str, Any]) -> str:
    """``reconstruction.md``: one row per victim sentence, recovered words in **bold**, others
    ~~struck~~, and the batch metrics."""
    sentences = result["text"]["sentences"]
    ps = result.get("per_sample", {})
    lines = [f"# Text reconstruction ({result['config']['attack']['name']} on "
             f"{result['text']['model']}, task {result['text']['task']})", "",
             "| # | original | reconstruction | " + " | ".join(KEYS) + " |",
             "|---|---|---|" + "---|" * len(KEYS)]
    bag = result["text"].get("bag")
    for i, s in enumerate(sentences):
        if "tokens" in s:  # a bag of tokens: which of the sentence's tokens it holds
            o = " ".join(f"**{t.strip()}**" if hit else f"_{t.strip()}_" for t, hit in s["tokens"])
            r = f"(bag of {len(bag or [])} tokens)"
        else:
            orig, rec = word_marks(s["original"], s["reconstruction"] or "")
            o = " ".join(w if hit else f"_{w}_" for w, hit in orig)
            r = " ".join(f"**{w}**" if hit else f"~~{w}~~" for w, hit in rec) or "(nothing)"
        cells = _metric_cells(ps, i, KEYS)
        lines.append(f"| {i} | {_md(o)} | {_md(r)} | " + " | ".join(cells) + " |")
    m = result["metrics"]
    lines += ["", "Batch: " + ", ".join(f"{k}={_fmt(v)}" for k, v in m.items()), ""]
    if bag is not None:
        lines += ["Recovered bag: " + " ".join(f"`{t.strip() or repr(t)}`" for t in bag), "",
                  "**bold**: the token is in the recovered bag; _italic_: missed."]
    else:
        lines += ["**bold**: recovered in place; ~~struck~~: not in the original; _italic_ "
                  "(original): missed."]
    lines += [f"- warning: {w}" for w in result.get("warnings", [])]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_html(result: dict[str, Any]) -> str:
    """``reconstruction.html``: the same table with recovered words highlighted."""
    ps = result.get("per_sample", {})
    rows = []
    bag = result["text"].get("bag")
    for i, s in enumerate(result["text"]["sentences"]):
        if "tokens" in s:
            o = "".join(f'<span class="{"hit" if hit else "lost"}">{html.escape(t)}</span>'
                        for t, hit in s["tokens"])
            r = f"<em>(bag of {len(bag or [])} tokens)</em>"
        else:
            orig, rec = word_marks(s["original"], s["reconstruction"] or "")
            o = " ".join(html.escape(w) if hit else f'<span class="lost">{html.escape(w)}</span>'
                         for w, hit in orig)
            r = " ".join(f'<span class="{"hit" if hit else "miss"}">{html.escape(w)}</span>'
                         for w, hit in rec) or "<em>(nothing)</em>"
        cells = "".join(f'<td class="num">{html.escape(c)}</td>' for c in _metric_cells(ps, i, KEYS))
        rows.append(f"<tr><td>{i}</td><td>{o}</td><td>{r}</td>{cells}</tr>")
    head = "".join(f"<th>{k}</th>" for k in ("#", "original", "reconstruction", *KEYS))
    batch = ", ".join(f"{html.escape(k)}={html.escape(_fmt(v))}" for k, v in result["metrics"].items())
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in result.get("warnings", []))
    title = html.escape(f"{result['config']['attack']['name']} on {result['text']['model']}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{_CSS}</style></head><body><h1>Text reconstruction: {title}</h1>"
            f"<p>task {html.escape(result['text']['task'])}. Green: recovered in place; red: not "
            f"in the original; grey (original): missed.</p><table><tr>{head}</tr>{''.join(rows)}"
            f"</table><p>Batch: {batch}</p><ul>{warn}</ul></body></html>\n")
