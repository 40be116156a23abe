"""Numerical checks of the paper's Sec. 4 theory: Lemma 4.1, Thm. 4.2 and Thm. 4.3.

* :func:`dimension_check` (Thm. 4.3): when the data dimension ``B * C * H * W`` exceeds the
  number of model parameters, the input-gradient map ``R^(B d) -> R^P`` cannot be injective
  near the data, so another input yields the same gradient.
* :func:`lemma41_check` (Lemma 4.1): from one update of a fully connected network the first
  layer's gradient determines the input exactly (``x = dL/dW_i / dL/db_i``); run through the
  library's ``analytic`` attack against a real client update.
* :func:`local_updates_sweep` (Thm. 4.2): the client runs U full-batch SGD steps (FedAvg, E = U,
  B = N) and the server inverts the model difference as if it were one gradient (the paper's
  approximation ``W_U - W_0 ~ -U lr grad``). With one sample the first layer's ratio stays exact
  for any U (every step adds a multiple of the same x to each row), so the sweep uses N = 2:
  there the redundant terms of Eq. (9) -- gradients taken at the drifted weights -- grow with U.
  ``ig`` (GIA-O, gradient matching only, one-step approximation) shows it cleanly (MLP, 16 px,
  N = 2, lr 0.1, 3 seeds: MSE 9e-5 at U = 1, 1.7e-3 at U = 2, 4.6e-3 at U = 8); ``analytic``
  already mixes the samples at U = 1 (MSE 0.026) and degrades less (0.033 at U = 8). The error
  per U is the MSE / PSNR of the matched reconstruction, averaged over seeds.

Everything goes through the library (dataset, model, client, observation, attack), so the
numbers are what ``gradleak attack`` would compute for the same scenario.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gradleak import metrics
from gradleak.config import Config, load_config
from gradleak.errors import GradleakError
from gradleak.io import atomic_write, write_text
from gradleak.models import count_parameters
from gradleak.scenario import Scenario


def dimension_check(model: nn.Module, batch: int, input_shape: Sequence[int]) -> dict:
    """Thm. 4.3: data dimension ``batch * prod(input_shape)`` vs the model's parameter count.

    ``warning`` is True when the data dimension exceeds the parameters: then at least one other
    input batch has the same gradient, and exact reconstruction is impossible in principle.
    """
    data_dim = int(batch) * math.prod(int(s) for s in input_shape)
    params = count_parameters(model)
    warning = data_dim > params
    message = (f"data dimension {data_dim} exceeds the {params} model parameters: another input "
               "yields the same gradient (Thm. 4.3)" if warning else
               f"data dimension {data_dim} <= {params} parameters: Thm. 4.3 does not rule out "
               "exact reconstruction")
    return {"data_dimension": data_dim, "parameters": params, "ratio": data_dim / params,
            "warning": warning, "message": message}


@dataclass(frozen=True)
class AttackOutcome:
    """One scenario's reconstruction error: matched ``mse``/``psnr`` means and ``max_abs`` error."""

    mse: float
    psnr: float
    max_abs: float
    local_updates: int


def run_update_attack(cfg: Config) -> AttackOutcome:
    """Client update + attack for ``cfg`` (no LPIPS), scored by matched MSE/PSNR."""
    sc = Scenario.from_config(cfg)
    rnd = sc.client_round()
    recon = sc.reconstruct(sc.observe(rnd.update, bn_statistics=rnd.bn_statistics)).images
    images = sc.images
    matched = metrics.reorder(recon, metrics.match_reconstructions(recon, images))
    psnr = metrics.psnr(matched, images).clamp(max=metrics.PSNR_REPORT_CAP)
    return AttackOutcome(mse=float(metrics.mse(matched, images).mean()), psnr=float(psnr.mean()),
                         max_abs=float((matched - images).abs().max()),
                         local_updates=sc.setup.local_updates)


MLP_SCENARIO = ["model.name=mlp", "model.hidden=[256]", "data.resolution=16",
                "attack.name=analytic", "attack.labels=known", "threat.knows_labels=true"]
"""The fully connected scenario of Lemma 4.1 / Thm. 4.2 (skimage photos at 16 px)."""


def lemma41_check(overrides: Sequence[str] = (), *, seed: int = 0) -> dict:
    """Lemma 4.1: one sample, one FedSGD gradient, ``analytic`` attack -> (near-)exact input."""
    cfg = load_config(None, [*MLP_SCENARIO, "data.num_samples=1", "client.protocol=fedsgd",
                             f"seed={seed}", *overrides])
    out = run_update_attack(cfg)
    return {"mse": out.mse, "psnr": out.psnr, "max_abs_error": out.max_abs,
            "exact": out.max_abs < 1e-4}


ATTACK_SETTINGS: dict[str, list[str]] = {
    "analytic": ["attack.name=analytic"],
    # GIA-O with gradient matching only (the paper's Sec. 5 baseline); the server approximates
    # the U-step update by one gradient (BST: it does not know the client's training details).
    "ig": ["attack.name=ig", "attack.tv=0", "threat.knows_client_config=false"],
}


def local_updates_sweep(updates: Sequence[int] = tuple(range(1, 9)), *, attack: str = "ig",
                        samples: int = 2, lr: float = 0.1, seeds: Sequence[int] = (0,),
                        iterations: int = 200, overrides: Sequence[str] = (),
                        log: Callable[[str], None] | None = None) -> list[dict]:
    """Thm. 4.2: reconstruction error after U = E full-batch local steps (FedAvg, B = N).

    ``attack``: ``analytic`` or ``ig`` (``iterations`` steps). Returns one row per U:
    ``{"attack", "U", "mse", "psnr", "mse_std", "psnr_std", "seeds"}`` (means and population
    std over ``seeds``).
    """
    if attack not in ATTACK_SETTINGS:
        raise GradleakError(f"unknown theory attack {attack!r}; allowed: {', '.join(ATTACK_SETTINGS)}")
    rows = []
    for u in updates:
        outs = []
        for seed in seeds:
            cfg = load_config(None, [*MLP_SCENARIO, *ATTACK_SETTINGS[attack],
                                     f"attack.iterations={iterations}",
                                     f"data.num_samples={samples}", "client.protocol=fedavg",
                                     f"client.local_epochs={u}", f"client.batch_size={samples}",
                                     f"client.lr={lr}", f"seed={seed}", *overrides])
            outs.append(run_update_attack(cfg))
        mse = torch.tensor([o.mse for o in outs], dtype=torch.float64)
        psnr = torch.tensor([o.psnr for o in outs], dtype=torch.float64)
        rows.append({"attack": attack, "U": outs[0].local_updates, "mse": float(mse.mean()),
                     "psnr": float(psnr.mean()), "mse_std": float(mse.std(unbiased=False)),
                     "psnr_std": float(psnr.std(unbiased=False)), "seeds": len(outs)})
        if log:
            log(f"{attack} U={u}: mse={rows[-1]['mse']:.5f} psnr={rows[-1]['psnr']:.2f} dB")
    return rows


CSV_COLUMNS = ("attack", "U", "mse", "psnr", "mse_std", "psnr_std", "seeds")


def write_local_updates_csv(path: str | Path, rows: Sequence[dict]) -> None:
    """One line per (attack, U) with :data:`CSV_COLUMNS`."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def plot_local_updates(path: str | Path, rows: Sequence[dict]) -> None:
    """Reconstruction MSE against U, one line per attack (Thm. 4.2). MSE rather than the mean
    per-sample PSNR: one exactly recovered sample (PSNR capped at 100 dB) would dominate that."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for attack in dict.fromkeys(r["attack"] for r in rows):
        sel = [r for r in rows if r["attack"] == attack]
        ax.errorbar([r["U"] for r in sel], [r["mse"] for r in sel], yerr=[r["mse_std"] for r in sel],
                    marker="o", capsize=3, label=attack)
    ax.set(xlabel="local updates U", ylabel="reconstruction MSE",
           title="reconstruction error vs local updates (Thm. 4.2)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)
