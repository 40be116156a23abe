"""DAGER's span test through a LoRA adapter (Hu et al., ICLR 2022): what a LoRA update still
tells about the batch's tokens.

An adapted projection computes ``W x + s B A x`` (``A [r, d]``, ``B [out, r]``). Its adapter
gradients are ``dL/dB = sum_t dY_t (A x_t)^T`` and ``dL/dA = s B^T sum_t dY_t x_t^T``. peft starts
``B = 0``, so in the first round only ``dL/dB`` is non-zero, and its rows lie in
``span{A x_t}``, a subspace of ``R^r``. DAGER's test therefore runs on the inputs projected by
``A`` (known to the server: it is part of the global model): a token passes at position p when
``A x(v, p)`` lies in that span. This works while the batch's distinct (token, position) pairs
are fewer than r; from r on the span is all of ``R^r`` and every token passes (``feasible`` is
false). The ``dL/dA`` rows (non-zero once ``B`` has trained) are not used.
"""

from __future__ import annotations

import torch
from torch import nn

from gradleak.attacks.transformer_layers import Architecture


def adapter_names(arch: Architecture, tensors: dict[str, torch.Tensor], k: int
                  ) -> tuple[str, str] | None:
    """The names of layer ``k``'s query-projection adapter ``(lora_A, lora_B)`` weights, when
    the update holds its ``lora_B`` gradient (None otherwise)."""
    module = arch.projection_names(k)[0].removesuffix(".weight")
    marker = f"{module}.lora_B."
    hits = sorted(n for n in tensors if n.startswith(marker) and n.endswith(".weight"))
    if not hits:
        return None
    b = hits[0]
    return b.replace(".lora_B.", ".lora_A.", 1), b


def adapter_gradient(model: nn.Module, arch: Architecture, tensors: dict[str, torch.Tensor],
                     k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(G, A)``: the ``lora_B`` gradient transposed, ``[r, out]`` float64 (its columns lie in
    ``span{A x_t}``), and the adapter's ``A [r, d]`` from the global model; None without one."""
    names = adapter_names(arch, tensors, k)
    if names is None:
        return None
    params = dict(model.named_parameters())
    if names[0] not in params:
        return None
    return tensors[names[1]].detach().double().T, params[names[0]].detach().double()
