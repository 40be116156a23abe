"""The audit's plain-language summary: one paragraph from the verdict rule's own numbers (runs,
runs leaked, the share of samples leaked, the bound), claiming nothing beyond them."""

from __future__ import annotations

from typing import Any

from gradleak.audit.verdict import LEAKS, SAFE


def _criterion(thresholds: dict[str, Any]) -> str:
    if "rouge1" in thresholds:
        return (f"ROUGE-1 >= {thresholds['rouge1']} and semantic similarity >= "
                f"{thresholds['semantic']}, and closer than any sentence guessed without the update")
    return (f"PSNR >= {thresholds['psnr']} dB and LPIPS <= {thresholds['lpips']}, and closer than "
            "every guess made without the update")


def plain_summary(levels: list[dict[str, Any]], *, text: bool, num_samples: int,
                  thresholds: dict[str, Any]) -> str:
    """What the honest-but-curious levels (0-4) showed, in words: the level that leaks most, or
    that none did (with the bound), or that the runs cannot decide."""
    ran = [lv for lv in levels if lv["level"] < 5 and lv["verdict"] != "not run"]
    what = ("sentence" if text else "image") + ("s" if num_samples != 1 else "")
    if not ran:
        return "No level ran, so nothing can be said about this setup."
    leaking = [lv for lv in ran if lv["verdict"] == LEAKS]
    if leaking:
        lv = max(leaking, key=lambda v: (v.get("run_leak_rate") or 0.0, -v["level"]))
        share = lv.get("leaked_share")
        lower = (lv.get("bound") or {}).get("lower")
        return (f"In {lv['runs_leaked']} of {lv['runs']} independent runs at {lv['name']}, a "
                f"server with that knowledge reconstructed at least one of the client's "
                f"{num_samples} {what} closely enough to count as leaked ({_criterion(thresholds)})"
                + (f"; {share:.0%} of all attacked samples leaked" if share is not None else "")
                + (f". Such runs make up at least {lower:.0%} of all runs (95 % confidence)."
                   if lower is not None else "."))
    if all(lv["verdict"] == SAFE for lv in ran):
        worst = max(ran, key=lambda v: (v.get("bound") or {}).get("upper") or 0.0)
        upper = (worst.get("bound") or {}).get("upper")
        return (f"No level leaked: across {sum(lv['runs'] for lv in ran)} runs, "
                f"{sum(lv['runs_leaked'] for lv in ran)} reconstructed a sample closely enough "
                f"to count as leaked ({_criterion(thresholds)}); at every level the share of "
                f"leaking runs is at most {upper:.0%} (95 % confidence). This holds for the attacks "
                "and budgets run here, not for every attack.")
    open_ = [lv["name"] for lv in ran if lv["verdict"] not in (LEAKS, SAFE)]
    return (f"The runs so far cannot decide at {', '.join(open_)}: too few runs, or attacks still "
            "improving, to say either that it leaks or that it does not (each level's reason says "
            "what to rerun).")
