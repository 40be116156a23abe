"""The Flower audit's end-of-run verdict and report: ``<out>/verdict.json``, ``report.md`` and
``index.html`` from the audited updates' records (:class:`~gradleak.flower.audit.LeakageAuditStrategy`).

Each audited update is one trial. With a simulation's ground truth, an update *leaks* when one
of its samples leaks by the project's criterion (the Score's ``leaked`` flags); the run's verdict
is ``leaks`` when any audited update leaked (a proof that this deployment leaked), ``no leak
found`` when none did (with the exact one-sided 95 % Clopper-Pearson upper bound on the share of
leaking updates; updates of one client in successive rounds are not independent victims, so the
bound describes these updates, not the deployment), and ``not scored`` without a ground truth (a
real server has none: the reconstructions and the attack losses are what it can show).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradleak.io import write_json, write_text

LEAKS, NO_LEAK, NOT_SCORED = "leaks", "no leak found", "not scored"
CONFIDENCE = 0.95


def upper_bound(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound of a share after ``k`` of ``n``."""
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(confidence, k + 1, n - k))


def flower_verdict(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The verdict over the audited updates' records (see the module docstring)."""
    ok = [r for r in records if "error" not in r and "withheld" not in r]
    scored = [r for r in ok if r.get("leak_rate") is not None]
    leaked = [r for r in scored if r["leak_rate"] > 0]
    n, k = len(scored), len(leaked)
    if k:
        verdict, claim = LEAKS, (f"{k} of {n} scored updates leaked at least one sample: this run "
                                 "of the deployment leaked")
    elif n:
        verdict, claim = NO_LEAK, (f"none of {n} scored updates leaked; the share of leaking "
                                   f"updates is at most {upper_bound(0, n):.0%} ({CONFIDENCE:.0%} "
                                   "upper bound) for these updates and this attack budget")
    else:
        verdict, claim = NOT_SCORED, ("no ground truth: the reconstructions and the attack's "
                                      "final gradient losses are shown, no similarity score")
    return {"verdict": verdict, "claim": claim, "audited": len(ok), "scored": n, "leaked": k,
            "failed": len([r for r in records if "error" in r]),
            "upper_bound": upper_bound(k, n) if n else None}


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown(summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
    cfg = summary.get("config") or {}
    attack = cfg.get("attack") or {}
    lines = [f"# gradleak Flower audit: {summary['verdict']}", "",
             f"**Verdict: {summary['verdict']}.** {summary['claim'][:1].upper()}"
             f"{summary['claim'][1:]}.", "",
             f"Audited {summary['audited']} update(s) ({summary['failed']} failed) with attack "
             f"{attack.get('name')} ({attack.get('iterations')} iterations); client assumed: "
             f"{(cfg.get('client') or {}).get('protocol')}, lr {(cfg.get('client') or {}).get('lr')}.",
             "", "| round | client | sees | attack loss | PSNR | LPIPS | ROUGE-1 | leak rate | file |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "withheld" in r:
            continue
        lines.append(f"| {r.get('round')} | {r.get('client')} | {r.get('sees', '-')} | "
                     f"{_num(r.get('attack_loss'))} | {_num(r.get('psnr'))} | "
                     f"{_num(r.get('lpips'))} | {_num(r.get('rouge1'))} | "
                     f"{_num(r.get('leak_rate'))} | {r.get('file') or r.get('error', '-')} |")
    for r in records:
        if str(r.get("file", "")).endswith(".png"):
            lines += ["", f"## round {r['round']}, {r['client']}", "", f"![{r['client']}]({r['file']})"]
    return "\n".join(lines) + "\n"


def write_report(out: Path, records: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """Write ``verdict.json``, ``report.md`` and ``index.html`` into ``out``; the verdict."""
    summary = {**flower_verdict(records), "mode": "flower audit", "config": config,
               "records": [{k: v for k, v in r.items() if k not in ("config", "attack_losses")}
                           for r in records]}
    write_json(out / "verdict.json", summary)
    render(out, summary)
    return summary


def render(out: Path, summary: dict[str, Any]) -> Path:
    """``report.md`` and ``index.html`` of a Flower audit's ``verdict.json`` content."""
    from gradleak.errors import GradleakError
    from gradleak.report.audit_verdict import page

    records = summary.get("records")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise GradleakError(f"{out / 'verdict.json'}: a Flower audit verdict needs its records")
    md = markdown(summary, records)
    write_text(out / "report.md", md)
    write_text(out / "index.html", page(out, summary, md))
    return out / "index.html"
