"""Architecture probes for the text attacks: where a transformer's embeddings and attention
projections live, their gradients, and the exact inputs of its attention layers.

Supported: Hugging Face GPT-2 (``GPT2LMHeadModel``, ``GPT2ForSequenceClassification``,
``GPT2Model``) and BERT (``BertForSequenceClassification``, ``BertModel``; MiniLM is a 6-layer
BERT of width 384), wrapped in a :class:`gradleak.models.text.TextModel`.

The span maths of DAGER (Petrov et al., NeurIPS 2024) is here too, shared by ``dager`` and
``token-set``: a linear layer ``y = x W`` (or ``W x``) has weight gradient ``X^T dY`` (or its
transpose), whose column space, oriented as ``[d_in, d_out]``, lies in the span of the layer's
inputs ``X`` (one row per token). We use the whole attention input projection (query, key and
value) rather than the query alone: a causal model's first position attends to itself only, so
its query gradient is exactly zero (the softmax over one key is constant), and the last BERT
layer's queries matter for [CLS] only; the key and value gradients still carry those tokens.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradleak.errors import GradleakError
from gradleak.models.text import is_text_model

SUPPORTED = ("GPT-2 (GPT2LMHeadModel, GPT2ForSequenceClassification, GPT2Model) and BERT "
             "(BertForSequenceClassification, BertModel, e.g. MiniLM)")
CHUNK = 512  # sequences per forward pass in layer_inputs (bounds memory)


@dataclass(frozen=True)
class Architecture:
    """What the attacks need to know of a supported model.

    ``family``: ``gpt2`` or ``bert``; ``base``: the ``GPT2Model`` / ``BertModel``; ``prefix``:
    its parameter-name prefix in the :class:`TextModel` (``"hf.transformer."``, ``"hf.bert."``);
    ``tied``: the output head shares the input embedding matrix (GPT-2's LM head).
    """

    family: str
    base: Any
    prefix: str
    width: int
    layers: int
    tied: bool

    @property
    def embedding_name(self) -> str:
        """The input (word) embedding parameter, ``[V, d]``."""
        own = "wte.weight" if self.family == "gpt2" else "embeddings.word_embeddings.weight"
        return self.prefix + own

    def query_name(self, k: int) -> str:
        """Layer ``k``'s query-projection weight (GPT-2: the fused ``c_attn``, q = ``[:, :d]``)."""
        if self.family == "gpt2":
            return f"{self.prefix}h.{k}.attn.c_attn.weight"
        return f"{self.prefix}encoder.layer.{k}.attention.self.query.weight"

    def projection_names(self, k: int) -> list[str]:
        """Layer ``k``'s attention input projections (query, key, value weights)."""
        if self.family == "gpt2":
            return [self.query_name(k)]  # one Conv1D [d, 3d] holds q | k | v
        own = f"{self.prefix}encoder.layer.{k}.attention.self."
        return [own + p + ".weight" for p in ("query", "key", "value")]

    def projection_module(self, k: int) -> nn.Module:
        """The module whose input is layer ``k``'s attention input (after GPT-2's ``ln_1``)."""
        if self.family == "gpt2":
            return self.base.h[k].attn.c_attn
        return self.base.encoder.layer[k].attention.self.query


def probe(model: nn.Module, *, who: str = "this attack") -> Architecture:
    """The :class:`Architecture` of a text model; a one-line error for anything else."""
    if not is_text_model(model):
        raise GradleakError(f"{who} reads transformer gradients of a text model "
                            f"(gradleak.models.text.TextModel), not {type(model).__name__}; "
                            f"supported: {SUPPORTED}")
    from transformers import BertModel, GPT2Model

    hf = model.hf
    if hasattr(hf, "get_base_model"):  # a peft (LoRA) wrapper
        hf = hf.get_base_model()
    found = [(family, base) for family, cls, attr in (("gpt2", GPT2Model, "transformer"),
                                                      ("bert", BertModel, "bert"))
             if isinstance(base := hf if isinstance(hf, cls) else getattr(hf, attr, None), cls)]
    if not found:
        raise GradleakError(f"{who} does not know the architecture {type(hf).__name__}; "
                            f"supported: {SUPPORTED}")
    family, base = found[0]
    kind = getattr(base.config, "position_embedding_type", "absolute") or "absolute"
    if family == "bert" and kind != "absolute":
        raise GradleakError(f"{who} needs absolute position embeddings, not {kind!r}")
    prefix = next(n for n, m in model.named_modules() if m is base)
    embedding = base.wte if family == "gpt2" else base.embeddings.word_embeddings
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    tied = head is not None and head.weight is embedding.weight
    layers = len(base.h) if family == "gpt2" else len(base.encoder.layer)
    return Architecture(family, base, prefix + "." if prefix else "", int(embedding.weight.shape[1]),
                        layers, tied)


def query_gradient(arch: Architecture, tensors: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """Layer ``k``'s query-weight gradient as ``[d_in, d_out]`` (columns in the inputs' span)."""
    g = _tensor(tensors, arch.query_name(k))
    return g[:, : arch.width] if arch.family == "gpt2" else g.T  # Conv1D [d, 3d]; Linear [out, in]


def attention_gradient(arch: Architecture, tensors: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    """Layer ``k``'s query, key and value weight gradients side by side, ``[d_in, 3 d]`` float64:
    its column space is the span of the layer inputs of the tokens that reach the loss."""
    parts = [_tensor(tensors, n) for n in arch.projection_names(k)]
    if arch.family == "bert":
        parts = [p.T for p in parts]
    return torch.cat(parts, dim=1).double()


def _tensor(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in tensors:
        raise GradleakError(f"the update has no tensor {name!r} (the attention projection the "
                            "span attacks read): the client froze it or trained it through LoRA "
                            "adapters; DAGER needs the full projection's gradient (try tag or "
                            "lamp, which match any shared tensors)")
    return tensors[name].detach()


def first_layer_inputs(model: nn.Module, token_ids: torch.Tensor, position: int) -> torch.Tensor:
    """The exact input of layer 0's attention projection for each token of ``token_ids [V]`` at
    ``position`` (segment 0 for BERT), ``[V, d]`` in the model's dtype, evaluation mode.
    GPT-2: ``ln_1(wte + wpe[p])``; BERT: ``LayerNorm(word + token_type[0] + position[p])``."""
    arch = probe(model)
    b = arch.base
    with torch.no_grad():
        if arch.family == "gpt2":
            return b.h[0].ln_1(b.wte.weight[token_ids] + b.wpe.weight[position])
        e = b.embeddings  # same summation order as BertEmbeddings.forward
        x = e.word_embeddings.weight[token_ids] + e.token_type_embeddings.weight[0]
        return e.LayerNorm(x + e.position_embeddings.weight[position])


class _Stop(Exception):
    """Raised by the capture hook: nothing after layer k's projection input is needed."""


def layer_inputs(model: nn.Module, x: torch.Tensor, k: int, *, chunk: int = CHUNK) -> torch.Tensor:
    """The input of layer ``k``'s attention projection for the sequences ``x [M, 2, L]`` (ids,
    attention mask), ``[M, L, d]``: read by a pre-hook on the real module, evaluation mode (no
    dropout), the forward stopped there."""
    arch = probe(model)
    if not 0 <= k < arch.layers:
        raise GradleakError(f"layer {k} does not exist: the model has {arch.layers} layers")
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0].detach())
        raise _Stop

    device = next(model.parameters()).device
    modes = [(m, m.training) for m in model.modules()]  # restored one by one: they may differ
    handle = arch.projection_module(k).register_forward_pre_hook(hook)
    model.eval()
    try:
        with torch.no_grad():
            for part in x.split(chunk):
                part = part.to(device)
                with contextlib.suppress(_Stop):
                    arch.base(input_ids=part[:, 0], attention_mask=part[:, 1])
    finally:
        handle.remove()
        for m, mode in modes:
            m.training = mode
    if not captured:
        return torch.zeros(0, x.shape[-1], arch.width, device=device)
    return torch.cat(captured)


# --- the span test (DAGER) -------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """An orthonormal basis ``[d, r]`` (float64) of a gradient's column space; ``singular``: the
    gradient's singular values (largest first); ``threshold``: the cut that gave rank ``r``;
    ``projection``: ``[d, d_in]`` where the span lives in a projected space (a LoRA adapter's
    ``A``, :mod:`gradleak.attacks.lora_span`): layer inputs are mapped by it before the test."""

    basis: torch.Tensor
    singular: torch.Tensor
    threshold: float
    projection: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    @property
    def blur(self) -> float:
        """``s_(r+1) / s_r``: how far (relative) a true input may sit from the estimated span.
        By Wedin's sin-theta theorem the rounding noise, of norm about ``s_(r+1)``, turns the
        span by at most about ``s_(r+1) / s_r``; tokens with small gradients sit there."""
        r = self.rank
        if r == 0 or r >= self.singular.numel():
            return 0.0
        return float(self.singular[r] / self.singular[r - 1])

    @property
    def width(self) -> int:
        return int(self.basis.shape[0])


def span_of(gradient: torch.Tensor, *, tolerance: float | None, eps: float,
            floor: float = 0.0, cap: int | None = None, extra: int = 0) -> Span:
    """The column space of ``gradient [d, n]``: singular values above ``tolerance * s_max``
    (``None``: ``eps * s_max``, ``eps`` the update's float precision: below it a direction is
    indistinguishable from the rounding of the gradient's sums) and above the absolute
    ``floor``; plus ``extra`` directions; at most ``cap`` (and ``d``).

    DAGER's code uses NumPy's ``matrix_rank`` rule, ``max(d, n) * eps`` (``rank_tolerance`` =
    2.3e-5 for a float32 ``[64, 192]``): on small randomly initialised BERTs it cut true tokens,
    whose directions sat at 3e-6..1e-5 of ``s_max`` ([CLS] dominates the gradient) above a
    rounding floor near 3e-8."""
    g = gradient.double()
    u, s, _ = torch.linalg.svd(g, full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return Span(g.new_zeros(g.shape[0], 0), s, 0.0)
    rel = tolerance if tolerance is not None else eps
    threshold = max(rel * float(s[0]), floor)
    r = int((s > threshold).sum()) + extra
    r = min(r, int(s.numel()), cap if cap is not None else g.shape[0])
    return Span(u[:, :r], s, threshold)


def span_distance(span: Span, vectors: torch.Tensor, *, chunk: int = 8192) -> torch.Tensor:
    """``||v - U U^T v|| / ||v||`` for each row of ``vectors [n, d]`` (float64, ``[n]``): 0 in
    the span, about ``sqrt(1 - r/d)`` for a random direction."""
    basis = span.basis
    out = []
    for part in vectors.split(chunk):
        v = part.to(basis.device, torch.float64)
        if span.projection is not None:
            v = v @ span.projection.T
        residual = v - (v @ basis) @ basis.T
        out.append(residual.norm(dim=1) / v.norm(dim=1).clamp_min(1e-300))
    return torch.cat(out) if out else vectors.new_zeros(0, dtype=torch.float64)


def position_candidates(model: nn.Module, span: Span, position: int, tolerance: float,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """DAGER's layer-0 filter at one position: the vocabulary ids whose layer-0 input lies in
    ``span`` (relative distance below ``tolerance``), sorted by distance, and their distances."""
    vocab = int(probe(model).base.get_input_embeddings().weight.shape[0])
    device = next(model.parameters()).device
    dist = torch.cat([span_distance(span, first_layer_inputs(model, ids, position))
                      for ids in torch.arange(vocab, device=device).split(8192)])
    ids = torch.nonzero(dist < tolerance).flatten()
    order = dist[ids].argsort()
    return ids[order].cpu(), dist[ids][order].cpu()


def input_dimension(model: nn.Module, *, tolerance: float = 1e-5) -> int:
    """The dimension of the space that layer 0's inputs can take at all: the rank of the inputs
    of up to ``4 d`` (token, position) pairs spread over the vocabulary and the positions.

    A LayerNorm output is ``gamma * z + beta`` with ``z`` of mean zero, so at initialisation
    (``beta = 0``) every input lies in a ``d - 1``-dimensional subspace: a span of rank ``d - 1``
    already holds every token, and feasibility must be judged against this, not ``d``."""
    arch = probe(model)
    base = arch.base
    vocab = int(base.get_input_embeddings().weight.shape[0])
    positions = int(getattr(base.config, "max_position_embeddings", None)
                    or base.config.n_positions)
    n = min(vocab, 4 * arch.width)
    ids = torch.linspace(0, vocab - 1, n).long().to(next(model.parameters()).device)
    rows = [first_layer_inputs(model, ids[i::positions], i)
            for i in range(min(positions, n))]
    x = torch.cat(rows).double()
    s = torch.linalg.svdvals(x)
    return int((s > tolerance * s[0]).sum()) if s.numel() and float(s[0]) > 0 else 0
