"""Numerical checks of the paper's Sec. 4 theory: Lemma 4.1 and Thm. 4.3 (Thm. 4.2's sweep
over the local updates U is a stored, resumable study: :mod:`gradleak.experiments.local_updates`).

* :func:`dimension_check` (Thm. 4.3): when the data dimension ``B * C * H * W`` exceeds the
  number of model parameters, the input-gradient map ``R^(B d) -> R^P`` cannot be injective
  near the data, so another input yields the same gradient.
* :func:`lemma41_check` (Lemma 4.1): from one update of a fully connected network the first
  layer's gradient determines the input exactly (``x = dL/dW_i / dL/db_i``); run through the
  library's ``analytic`` attack against a real client update.
* :data:`MLP_SCENARIO`: the fully connected scenario both these checks and Thm. 4.2's sweep use.

Everything goes through the library (dataset, model, client, observation, attack), so the
numbers are what ``gradleak attack`` would compute for the same scenario.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from gradleak import metrics
from gradleak.config import Config, load_config
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
