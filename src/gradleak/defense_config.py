"""The ``defense`` config section (kept apart from :mod:`gradleak.config` so it stays small).

Every field is a ``defense.<key>`` contract (docs, stores, Flower's ``defense_mod`` keywords);
a help text starting ``name:`` or ``a/b:`` tells which defenses read the key.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradleak.config_values import option as _opt


@dataclass
class DefenseConfig:
    name: str = _opt("none", help="defense name, see `gradleak defenses`")
    bits: int = _opt(4, minimum=1, help="qsgd: bits of the magnitude index, s = 2^bits - 1")
    levels: int | None = _opt(None, minimum=1, help="qsgd: s quantisation levels, overrides bits")
    sparsity: float = _opt(0.9, minimum=0.0, help="topk: fraction of entries zeroed, in [0, 1]")
    bound: float = _opt(0.1, minimum=0.0, help="clip: entries clamped to [-bound, bound]")
    clip_norm: float | None = _opt(None, minimum=0.0,
                                   help="clip_norm: max L2 norm of the update; gaussian: clip first")
    noise_multiplier: float = _opt(0.1, minimum=0.0,
                                   help="gaussian: noise std = multiplier * (clip_norm or 1)")
    scale_sign: bool = _opt(False, help="signsgd: scale signs by the tensor's mean |value|")
    per_tensor: bool = _opt(True, help="qsgd/signsgd/topk: per tensor, else over the whole update")
    dp_noise_multiplier: float = _opt(1.0, minimum=0.0, help="dpsgd: noise std / dp_max_grad_norm "
                                      "(alias fl.dp_noise_multiplier)")
    dp_max_grad_norm: float = _opt(1.0, minimum=0.0, help="dpsgd: per-sample L2 clipping bound "
                                   "(alias fl.dp_max_grad_norm)")
    dp_delta: float = _opt(1e-5, minimum=0.0, help="dpsgd: delta of the reported (epsilon, delta) "
                           "(alias fl.dp_delta)")
    soteria_rate: float = _opt(0.6, minimum=0.0, added=True, help="soteria: fraction of the "
                               "representation's features pruned, in [0, 1] (published: 60%)")
    soteria_layer: str | None = _opt(None, added=True, help="soteria: the module name of the "
                                     "linear layer reading the representation; null: the last "
                                     "nn.Linear")
    outpost_beta: float = _opt(0.125, minimum=0.0, added=True, help="outpost: perturbation "
                               "probability 1 / (1 + beta * round) (Plato: 0.125)")
    outpost_phi: float = _opt(40.0, minimum=0.0, added=True, help="outpost: percent of entries "
                              "(largest Fisher information) that get noise (Plato: 40)")
    outpost_prune: float = _opt(80.0, minimum=0.0, added=True, help="outpost: percent of each "
                                "tensor's smallest entries zeroed (Plato: 80)")
    outpost_noise: float = _opt(0.8, minimum=0.0, added=True, help="outpost: noise std = this * "
                                "min(var(W), 1) per tensor (Plato: 0.8)")
