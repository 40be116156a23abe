"""DP-SGD (Abadi et al., CCS 2016) as a defense: per-sample L2 clipping and Gaussian noise
inside the client's local training, not a post-processing of its update.

The training itself is :func:`gradleak.fl.dp.dp_client_update`; choosing ``defense.name=dpsgd``
makes every client (the victim's single round in ``gradleak attack``, every client of a
federated run) train with it, reading ``defense.dp_noise_multiplier``, ``dp_max_grad_norm`` and
``dp_delta`` (aliases: the older ``fl.dp_*`` keys; ``fl.dp=true`` adds the same training under
any other defense). What reaches the server is the DP-SGD update unchanged, so the function
registered here passes it through.
"""

from __future__ import annotations

import torch

from gradleak.defenses import register_defense
from gradleak.update import SharedUpdate

# Defenses whose work happens in the client's training, read by the code that trains clients.
TRAINING_DEFENSES = frozenset({"dpsgd"})


@register_defense("dpsgd")
def dpsgd(update: SharedUpdate, *, generator: torch.Generator | None = None) -> SharedUpdate:
    """DP-SGD's update as trained (clipping and noise happened per step); passed through."""
    return update
