"""QSGD stochastic quantisation (Alistarh et al., NeurIPS 2017; the paper's "Q", App. C)."""

from __future__ import annotations

import torch

from gradleak.defenses import check_param, map_tensors, random_like, register_defense
from gradleak.defenses.surrogate import identity, register_surrogate
from gradleak.update import SharedUpdate

# float32 holds integers exactly up to 2^24, so more levels than that are not representable.
MAX_BITS = 24


def levels_for(bits: int, levels: int | None = None) -> int:
    """s, the number of non-zero magnitude levels: ``levels`` if given, else 2^bits - 1.

    ``bits`` counts the bits of the magnitude index xi in {0, ..., s} (s + 1 = 2^bits values); the
    sign costs one more bit, as in QSGD's encoding. So 1 bit gives s = 1, a ternary
    {-||v||, 0, +||v||} code, and the paper's 4 bits give s = 15.
    """
    if levels is not None:
        check_param(levels >= 1, "levels", levels, "an integer >= 1 (or null to use defense.bits)")
        return levels
    check_param(1 <= bits <= MAX_BITS, "bits", bits, f"an integer in [1, {MAX_BITS}]")
    return 2**bits - 1


def quantize(v: torch.Tensor, s: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """QSGD's Q_s on a flat tensor ``v``: ||v|| * sign(v_i) * xi_i / s, where xi_i rounds
    l = s * |v_i| / ||v|| up to ceil(l) with probability l - floor(l), else down, so E[Q_s(v)] = v."""
    norm = torch.linalg.vector_norm(v)
    if norm == 0:
        return torch.zeros_like(v)
    scaled = s * v.abs() / norm
    low = scaled.floor()
    xi = low + (random_like(v, generator, "uniform") < scaled - low).to(v.dtype)
    return norm * torch.sign(v) * xi / s


@register_defense("qsgd")
def qsgd(update: SharedUpdate, *, generator: torch.Generator | None = None, bits: int = 4,
         levels: int | None = None, per_tensor: bool = True) -> SharedUpdate:
    """QSGD: unbiased stochastic quantisation of each tensor to s = 2^bits - 1 levels (Alistarh 2017).

    Each tensor ``v`` (any shape, flattened) becomes ||v||_2 * sign(v_i) * xi_i / s with xi_i the
    stochastic rounding of s * |v_i| / ||v||_2 to a neighbouring integer, so it has at most s + 1
    distinct magnitudes and E[q(v)] = v. The norm is taken per tensor (QSGD's bucket = one
    parameter tensor), or over the whole update with ``per_tensor=False``. ``levels`` overrides
    ``bits``. The paper's grid is 1-4 bits.
    """
    s = levels_for(bits, levels)
    return map_tensors(update, lambda v: quantize(v, s, generator), per_tensor=per_tensor)


# QSGD is unbiased, E[Q(g)] = g: the expectation passes straight through.
register_surrogate("qsgd")(identity)
