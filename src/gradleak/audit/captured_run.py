"""``gradleak audit --update FILE``: the ladder's levels on one captured update
(:mod:`gradleak.audit.captured`), written to ``captured.json``, ``report.md`` and
``levels/<level>.png``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gradleak.audit.captured import (
    LEAKS,
    NO_LEAK,
    NOT_SCORED,
    level_cfg,
    load_truth,
    load_update,
    runnable,
)
from gradleak.audit.ladder import check_user_attack_keys, load_ladder, read_setup
from gradleak.errors import GradleakError
from gradleak.io import write_json, write_text

HONEST_VERDICT = (0, 1)  # the levels the verdict rests on, as for a setup audit


def audit_captured(options: Any, *, update: str, kind: str, truth: str | None,
                   log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Attack the captured ``update`` at every level that needs no client simulation; write and
    return ``captured.json``'s content."""
    from gradleak import __version__

    setup = read_setup(options.config, options.overrides)
    if setup.text:
        raise GradleakError("--update audits image models; for a text model's captured update use "
                            "gradleak.flower.LeakageAuditStrategy's attack_update (docs/flower.md)")
    ladder = load_ladder().for_setup(setup)
    check_user_attack_keys(ladder, setup)
    budget = ladder.budget(options.budget)
    data = setup.dataset
    victims = (load_truth(truth, setup.cfg, channels=data.channels) if truth else
               (torch.zeros(setup.num_samples, data.channels, data.resolution, data.resolution),
                torch.zeros(setup.num_samples, dtype=torch.long)))
    if truth and len(victims[1]) != setup.num_samples:
        raise GradleakError(f"--truth holds {len(victims[1])} samples but data.num_samples="
                            f"{setup.num_samples}: give the number of samples behind the update")
    out = Path(options.out)
    levels = []
    for level, why in runnable(ladder, setup):
        if why is not None:
            levels.append({"level": level.level, "name": level.name, "title": level.title,
                           "verdict": "not run", "reason": why})
            continue
        log(f"captured update: {level.name}")
        levels.append(_attack_level(ladder, level, setup, budget, update=update, kind=kind,
                                    victims=victims, scored=truth is not None, out=out,
                                    progress=options.progress))
    result = {"mode": "captured update", "update": str(update), "update_is": kind,
              "truth": truth, **_verdict(levels, scored=truth is not None), "levels": levels,
              "setup": {"model": setup.cfg.model.name, "checkpoint": setup.cfg.model.checkpoint,
                        "num_samples": setup.num_samples, "protocol": setup.cfg.client.protocol,
                        "lr": setup.cfg.client.lr, "local_epochs": setup.cfg.client.local_epochs,
                        "batch_size": setup.cfg.client.batch_size, **setup.described,
                        "gradleak_version": __version__},
              "budget": {"name": options.budget or "default", "attack": budget.get("attack")}}
    write_json(out / "captured.json", result)
    write_text(out / "report.md", markdown(result))
    return result


def _attack_level(ladder: Any, level: Any, setup: Any, budget: dict[str, Any], *, update: str,
                  kind: str, victims: tuple[torch.Tensor, torch.Tensor], scored: bool,
                  out: Path, progress: bool) -> dict[str, Any]:
    from gradleak.images import save_comparison
    from gradleak.scenario import Scenario

    cfg = level_cfg(ladder, level, setup, budget, truth=scored)
    sc = Scenario.from_config(cfg, victim=victims)
    shared = load_update(update, sc.model, kind=kind, num_samples=setup.num_samples)
    started = time.perf_counter()
    recon = sc.reconstruct(sc.observe(shared), progress=progress)
    row: dict[str, Any] = {
        "level": level.level, "name": level.name, "title": level.title,
        "attack": cfg.attack.name, "iterations": recon.iterations,
        "attack_loss": float(recon.losses[0]) if recon.losses else None,
        "labels_inferred": recon.labels, "label_source": recon.label_source,
        "seconds": round(time.perf_counter() - started, 3), "image": f"levels/{level.name}.png"}
    if scored:
        score = sc.score(recon, images=victims[0], labels=victims[1])
        flags = score.per_sample.get("leaked")
        leaked = None if flags is None else sum(bool(f) for f in flags)
        row.update(psnr=score.psnr, lpips=score.lpips, ssim=score.ssim,
                   label_accuracy=score.label_accuracy, samples_leaked=leaked,
                   warnings=score.warnings,
                   verdict=(NOT_SCORED if leaked is None else LEAKS if leaked else NO_LEAK))
        save_comparison(out / row["image"], victims[0], score.matched)
    else:
        from gradleak.images import save_reconstruction

        row["verdict"] = NOT_SCORED
        save_reconstruction(out / row["image"], recon.images, None)
    return row


def _verdict(levels: list[dict[str, Any]], *, scored: bool) -> dict[str, Any]:
    ran = [lv for lv in levels if lv["verdict"] != "not run"]
    honest = [lv for lv in ran if lv["level"] in HONEST_VERDICT]

    def of(rows: list[dict[str, Any]]) -> str:
        if any(lv["verdict"] == LEAKS for lv in rows):
            return LEAKS
        return NO_LEAK if scored and rows and all(lv["verdict"] == NO_LEAK for lv in rows) \
            else NOT_SCORED
    return {"verdict": of(honest), "worst_case": of(ran), "fails": of(honest) == LEAKS,
            "claim": ("one captured update is one trial: 'leaks' shows that this update leaks "
                      "one of its samples; 'no leak found' bounds no leak rate (other rounds, "
                      "clients or budgets may leak)" if scored else
                      "no similarity score can be computed without the samples the client "
                      "trained on (--truth FILE.npz): the reconstructions and the attack's own "
                      "evidence (final gradient loss, inferred labels) are shown")}


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown(result: dict[str, Any]) -> str:
    """``report.md`` of a captured-update audit."""
    st = result["setup"]
    lines = [f"# gradleak audit of a captured update: {result['verdict']}", "",
             f"**Verdict (levels 0-1): {result['verdict']}.** Worst case (levels 0-4): "
             f"{result['worst_case']}. {result['claim'][0].upper()}{result['claim'][1:]}.", "",
             f"Update: {result['update']} (as {result['update_is']}), {st['num_samples']} "
             f"sample(s); global model {st['model']} ({st.get('model_class')}, "
             f"{st.get('parameters')} parameters), checkpoint {st.get('checkpoint') or 'none'}; "
             f"client granted: protocol {st['protocol']}, lr {st['lr']}, local_epochs "
             f"{st['local_epochs']}, batch_size {st['batch_size']}; gradleak "
             f"{st['gradleak_version']}.", "",
             "| level | attack | verdict | attack loss | labels inferred | PSNR | LPIPS | "
             "samples leaked | why |", "|---|---|---|---|---|---|---|---|---|"]
    for lv in result["levels"]:
        lines.append(f"| {lv['level']} {lv['name']} | {lv.get('attack', '-')} | {lv['verdict']} "
                     f"| {_num(lv.get('attack_loss'))} | {lv.get('labels_inferred', '-')} | "
                     f"{_num(lv.get('psnr'))} | {_num(lv.get('lpips'))} | "
                     f"{_num(lv.get('samples_leaked'))} | {lv.get('reason', '')} |")
    for lv in result["levels"]:
        if lv.get("image"):
            lines += ["", f"## {lv['title']}", "", f"![{lv['name']}]({lv['image']})"]
    return "\n".join(lines) + "\n"
