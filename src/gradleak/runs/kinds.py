"""How one run of an experiment executes, by kind (the worker entry point is
:func:`gradleak.runs.worker.execute`).

A kind is ``fn(cfg, ctx, options) -> dict`` returning the run's metrics (flat, JSON-ready) and
optionally ``"_result"`` (extra JSON kept in the store). Kinds register with
``@register_kind(name)``:

* ``attack``: :func:`gradleak.runner.run_scenario` (one client, one update, one attack);
  option ``igsa: true`` adds the IGSA of the attacked model at the victim's samples.
* ``stage``: the paper's Fig. 7: FL training (cached, shared by every round of one model), then
  accuracy, IGSA and the attack against the global model of round ``run.round``.
* ``privacy_utility``: the paper's Fig. 11 / Tab. 6: FL training with every client applying
  the scenario's defense (final accuracy), then the attack on the victim's observed update
  (option ``attack: false``: the training's accuracy only, the audit's utility cost).
* ``defended_attack``: ``attack`` on the defended update, plus the defense's relative distortion
  ``||D(u) - u|| / ||u||`` of the client's update (the audit's cost without training).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradleak.errors import GradleakError
from gradleak.registry import Registry

KINDS: Registry = Registry("experiment kind")


def register_kind(name: str) -> Callable:
    return KINDS.register(name)


@dataclass
class RunContext:
    """Where a run writes: its own folder, and the sweep's shared artifact cache."""

    run_dir: Path
    cache: Path


def _flat_metrics(metrics: dict[str, Any], *, text: bool = False) -> dict[str, Any]:
    """One store column per metric of :data:`gradleak.metrics.METRICS` (text runs: of
    :data:`gradleak.metrics.text.TEXT_METRICS`; imported here: listing kinds must not import
    torch)."""
    if text:
        from gradleak.metrics.text import TEXT_METRICS as METRICS
    else:
        from gradleak.metrics import METRICS

    return {k: metrics.get(k) for k in METRICS}


def _scenario_metrics(sc: Any, ctx: RunContext, *, igsa_points: int | None,
                      extra: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run ``sc`` (a :class:`~gradleak.scenario.Scenario`) into the run folder; with
    ``igsa_points``, first the IGSA of its model at the victim's samples; ``extra`` adds
    metrics read off the finished :class:`~gradleak.scenario.RunOutput`."""
    from gradleak.analysis.igsa import igsa
    from gradleak.runner import write_run

    out: dict[str, Any] = {}
    if igsa_points:
        out["igsa"] = igsa(sc.model, sc.images, sc.labels, num_points=igsa_points,
                           seed=sc.cfg.seed).value
    run = sc.run()
    write_run(ctx.run_dir, run)
    res = run.result
    out.update(_flat_metrics(res["metrics"], text="text" in res))
    out.update(attack_seconds=res["attack_seconds"], iterations=res["iterations"],
               model_parameters=res["scenario"]["model_parameters"],
               local_updates=res["scenario"]["local_updates"])
    out["_result"] = {k: res[k] for k in ("per_sample", "labels", "thresholds", "warnings",
                                          "scenario", "versions", "git_commit", "attack_losses",
                                          "loss_history", "iterations_used", "baselines")}
    out["_result"].update({k: res[k] for k in ("text", "attack_details") if k in res})
    if extra is not None:
        out.update(extra(run))
    return out


@register_kind("attack")
def run_attack(cfg: Any, ctx: RunContext, options: dict[str, Any]) -> dict[str, Any]:
    from gradleak.scenario import Scenario

    points = int(options.get("igsa_points", 4)) if options.get("igsa") else None
    return _scenario_metrics(Scenario.from_config(cfg), ctx, igsa_points=points)


def _distortion(before: Any, after: Any) -> float | None:
    """``||after - before|| / ||before||`` over every tensor of two ``SharedUpdate``s."""
    diff = sum(float((after.tensors[k].float() - v.float()).pow(2).sum())
               for k, v in before.tensors.items())
    norm = sum(float(v.float().pow(2).sum()) for v in before.tensors.values())
    return math.sqrt(diff / norm) if norm > 0 else None


@register_kind("defended_attack")
def run_defended_attack(cfg: Any, ctx: RunContext, options: dict[str, Any]) -> dict[str, Any]:
    from gradleak.scenario import Scenario

    # The distortion of the very update the attack saw: one client round, one defense.
    return _scenario_metrics(Scenario.from_config(cfg), ctx, igsa_points=None,
                             extra=lambda run: {"distortion": _distortion(run.client_update,
                                                                          run.update)})


@register_kind("stage")
def run_stage(cfg: Any, ctx: RunContext, options: dict[str, Any]) -> dict[str, Any]:
    from gradleak.config import load_config
    from gradleak.runs.artifacts import ensure_federated
    from gradleak.scenario import Scenario

    if "round" not in options:
        raise GradleakError("kind 'stage' needs a run.round grid axis (the FL round to attack)")
    r = int(options["round"])
    if not 0 <= r <= cfg.fl.rounds:
        raise GradleakError(f"bad run.round={r}: must be in 0..fl.rounds={cfg.fl.rounds}")
    folder, accuracy = ensure_federated(cfg, ctx.cache)
    tree = cfg.to_dict()
    tree["model"]["checkpoint"] = str(folder / f"round_{r:03d}.pt")
    out = _scenario_metrics(Scenario.from_config(load_config(base=tree, trusted_base=True)), ctx,
                            igsa_points=int(options.get("igsa_points", 4)))
    out["accuracy"] = accuracy[r]
    out["_result"] = {k: out["_result"][k] for k in ("per_sample", "warnings", "git_commit")}
    return out


def attack_observed(cfg: Any, run: Any, *, progress: bool = False) -> tuple[Any, Any]:
    """Attack what the server observed of the victim at ``fl.attack_round`` of the federated
    ``run`` (a :class:`~gradleak.fl.server.FederatedRun`): the global model of that round, the
    victim's defended update (under secure aggregation the aggregate, scored against every
    sampled client's samples). Returns ``(Score, truth [N, C, H, W])``."""
    import copy

    from gradleak.fl.server import dataset_tensors
    from gradleak.scenario import Scenario

    res = run.result
    model = copy.deepcopy(run.model)
    model.load_state_dict(res.attack_state)
    if getattr(run.train, "modality", None) == "text":  # TextTargets over the tokenized sentences
        tokenized = run.train.dataset
        images, labels = tokenized.tensors(res.observed_indices)  # ids and class labels
        # The victims are these rows of the dataset: the reference pool must not hold them.
        sc = Scenario.from_config(cfg, model=model, data=tokenized.source, victim=(images, labels),
                                  victim_indices=list(res.observed_indices))
    else:
        images, labels = dataset_tensors(run.train, res.observed_indices)
        sc = Scenario.from_config(cfg, model=model, data=run.train, victim=(images, labels),
                                  victim_indices=list(res.observed_indices))
    obs = sc.observe(res.observed, setup=res.observed_setup, mixing=res.observed_mixing)
    return sc.score(sc.reconstruct(obs, progress=progress)), images


def text_utility(run: Any, cfg: Any) -> dict[str, Any]:
    """A causal LM's held-out utility beside its next-token accuracy: ``final_perplexity`` of
    the trained global model on the whole test split (``{}`` for other models)."""
    from gradleak.models.train_lm import perplexity

    if getattr(run.train, "modality", None) != "text" or run.model.task != "causal_lm":
        return {}
    value, tokens = perplexity(run.model, list(run.test.dataset.source.texts), cfg.data.max_length)
    return {"final_perplexity": value, "perplexity_tokens": tokens}


def _save_reconstruction(path: Path, score: Any, truth: Any) -> None:
    from gradleak.images import save_comparison
    from gradleak.io import write_text

    if hasattr(score, "psnr"):
        save_comparison(path.with_suffix(".png"), truth, score.matched)
        return
    lines = [f"original:       {o}\nreconstruction: {r}" for o, r in
             zip(score.per_sample["original"], score.per_sample["reconstruction"], strict=True)]
    write_text(path.with_suffix(".txt"), "\n".join(lines) + "\n")


@register_kind("privacy_utility")
def run_privacy_utility(cfg: Any, ctx: RunContext, options: dict[str, Any]) -> dict[str, Any]:
    from gradleak.data import describe_dataset
    from gradleak.fl.server import run_federated

    if options.get("attack", True) is False:  # utility only: the final accuracy of the training
        fed = run_federated(cfg)
        limit = cfg.fl.test_samples
        eps = list(fed.result.epsilon.values())
        return {"final_accuracy": fed.result.final_accuracy, **text_utility(fed, cfg),
                "victim_epsilon": fed.result.victim_epsilon,
                "max_epsilon": max(eps) if eps else None,
                "test_data": describe_dataset(fed.test)["split"],
                "test_samples": len(fed.test) if limit is None else min(limit, len(fed.test)),
                "_result": {"accuracy": list(fed.result.accuracy)}}
    started = time.perf_counter()
    fed = run_federated(cfg, checkpoint_dir=ctx.run_dir if options.get("save_checkpoints") else None)
    fl_seconds = time.perf_counter() - started
    started = time.perf_counter()
    score, truth = attack_observed(cfg, fed)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    _save_reconstruction(ctx.run_dir / "reconstruction", score, truth)
    res = fed.result
    eps = list(res.epsilon.values())
    out = _flat_metrics(score.metrics(), text=not hasattr(score, "psnr"))
    out.update(final_accuracy=res.final_accuracy, victim_epsilon=res.victim_epsilon,
               max_epsilon=max(eps) if eps else None, attack_round=res.attack_round,
               observed_samples=res.observed.num_samples,
               secure_aggregation=int(res.secure_aggregation),
               leaked=(None if score.per_sample["leaked"] is None
                       else int(any(score.per_sample["leaked"]))),
               test_data=describe_dataset(fed.test)["split"], fl_seconds=round(fl_seconds, 3),
               attack_seconds=round(time.perf_counter() - started, 3), **text_utility(fed, cfg))
    out["_result"] = {"per_sample": score.per_sample, "warnings": score.warnings,
                      "accuracy": list(res.accuracy)}
    return out
