"""One scenario end to end: data -> model -> client -> defense -> attack -> metrics -> result.

``run_scenario(cfg)`` is the library entry point; ``write_run`` stores its outputs atomically.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from gradleak import metrics
from gradleak.attacks import build_attack, observe
from gradleak.attacks.adaptive import attach_adaptive
from gradleak.attacks.base import Reconstruction
from gradleak.config import Config
from gradleak.data import build_dataset
from gradleak.data.sampling import select_victim_samples
from gradleak.defenses import build_defense
from gradleak.errors import GradleakError
from gradleak.fl.client import ClientSetup, SharedUpdate, client_update
from gradleak.io import atomic_write, write_json, write_text
from gradleak.models import build_model, count_parameters
from gradleak.provenance import git_commit, seed_everything, versions
from gradleak.report.images import save_comparison
from gradleak.threat import ThreatModel


@dataclass
class RunOutput:
    """A finished run: the JSON-ready ``result``, the victim's images and the reconstruction."""

    result: dict[str, Any]
    truth: torch.Tensor
    reconstruction: Reconstruction
    matched: torch.Tensor  # reconstruction reordered to the ground truth's order
    update: SharedUpdate  # what the client shared, after the defense


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GradleakError(f"bad value {name!r} for device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GradleakError(f"bad value {name!r} for device: CUDA is not available here; use cpu")
    return device


def run_scenario(cfg: Config, *, progress: bool = False) -> RunOutput:
    """Run one audit scenario and score it against the ground truth."""
    device = _device(cfg.device)
    seed_everything(cfg.seed)
    started = time.perf_counter()

    dataset = build_dataset(cfg.data)
    images, labels, indices = select_victim_samples(dataset, cfg.data, seed=cfg.seed)
    setup = ClientSetup.from_config(cfg.client, num_samples=len(labels))
    threat = ThreatModel.from_config(cfg.threat)
    attack = build_attack(cfg.attack)
    # Refuse before any expensive work if the attack needs more than the scenario grants.
    threat.require(attack.needs(), who=f"attack {cfg.attack.name!r}")

    model = build_model(cfg.model, num_classes=dataset.num_classes, channels=dataset.channels,
                        resolution=dataset.resolution, mean=dataset.mean, std=dataset.std)
    model = attack.prepare_model(model, input_shape=tuple(images.shape[1:]),
                                 num_classes=dataset.num_classes, seed=cfg.seed).to(device)
    update = client_update(model, images.to(device), labels.to(device), setup, seed=cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    shared = build_defense(cfg.defense)(update, generator=generator)
    if cfg.attack.adaptive:  # the attacker post-processes its trial gradients like the client
        if hasattr(attack, "use_defense"):  # gradient-free search (GGL) applies the real defense
            attack.use_defense(build_defense(cfg.defense))
        else:  # gradient-based attacks need a differentiable surrogate of it
            attach_adaptive(attack, cfg.defense, shared, model)

    obs = observe(model=model, update=shared, threat=threat, setup=setup, labels=labels,
                  input_shape=tuple(images.shape[1:]), num_classes=dataset.num_classes)
    attack_started = time.perf_counter()
    recon = attack(obs, seed=cfg.seed, progress=progress)
    attack_seconds = time.perf_counter() - attack_started

    scores = metrics.score(recon.candidates, images, lpips_net=cfg.metrics.lpips_net,
                           psnr_threshold=cfg.metrics.psnr_threshold,
                           lpips_threshold=cfg.metrics.lpips_threshold)
    for message in scores["warnings"]:
        warnings.warn(message, stacklevel=2)
    matched = recon.images[torch.tensor(scores["matching"])]
    params = count_parameters(model)
    data_dim = int(images.numel())
    notes = list(scores["warnings"])
    if data_dim > params:
        notes.append(f"data dimension {data_dim} exceeds the {params} model parameters: by the "
                     "paper's Thm. 4.3 another input yields the same gradient")

    result = {
        "metrics": {
            "mse": scores["mse"],
            "psnr": scores["psnr"],
            "ssim": scores["ssim"],
            "lpips": scores["lpips"],
            "label_accuracy": metrics.label_accuracy(recon.labels, labels.tolist()),
            "brr": scores["brr"],
            "wsrr": scores["wsrr"],
        },
        "labels": {"true": labels.tolist(), "inferred": recon.labels,
                   "source": recon.label_source},
        "per_sample": scores["per_sample"],
        "thresholds": scores["thresholds"],
        "wsrr_initializations": scores["wsrr_initializations"],
        "iterations": recon.iterations,
        "seconds": round(time.perf_counter() - started, 3),
        "attack_seconds": round(attack_seconds, 3),
        "attack_losses": recon.losses,
        "loss_history": recon.history,
        "scenario": {
            "dataset": dataset.name,
            "victim_indices": indices,
            "protocol": setup.protocol,
            "local_updates": setup.local_updates,
            "model_parameters": params,
            "data_dimension": data_dim,
            "threat": threat.describe(),
        },
        "warnings": notes,
        "config": cfg.to_dict(),
        "config_digest": cfg.digest(),
        "versions": versions(),
        "git_commit": git_commit(),
        "seed": cfg.seed,
    }
    return RunOutput(result=result, truth=images.cpu(), reconstruction=recon, matched=matched,
                     update=shared)


def write_run(out: str | Path, run: RunOutput) -> Path:
    """Write ``config.yaml``, ``reconstruction.png`` and, last, ``result.json`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", yaml.safe_dump(run.result["config"], sort_keys=False))
    save_comparison(out / "reconstruction.png", run.truth, run.matched)
    tensors = {"truth": run.truth, "reconstruction": run.matched,
               "candidates": run.reconstruction.candidates}
    atomic_write(out / "tensors.pt", lambda p: torch.save(tensors, p))  # unique temp name
    write_json(out / "result.json", run.result)
    return out / "result.json"
