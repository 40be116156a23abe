"""DAGER: exact gradient inversion for transformers (Petrov et al., NeurIPS 2024, "DAGER: Exact
Gradient Inversion for Large Language Models"), the paper's GIA-A on text.

The gradient of an attention input projection is ``X^T dY``: its column space is spanned by the
layer inputs of the batch's tokens (:mod:`gradleak.attacks.transformer_layers`). With fewer
distinct (token, position) pairs than the width ``d``, that span is a proper subspace, and a
token's layer-0 input lies in it essentially only if the token occurs there. The attack:

1. **Span.** ``G_k`` = layer k's query | key | value weight gradient as ``[d, 3d]``; rank ``r_k`` =
   singular values above ``rank_tolerance * s_max`` (default: the float eps, see
   :func:`~gradleak.attacks.transformer_layers.span_of` for why not DAGER's ``max(shape) * eps``),
   capped by the tokens the batch can hold (``B x L``, times U for FedAvg when the client's
   training is known). ``feasible = r_0 < d``.
2. **Layer-0 filter.** For each position p and every vocabulary id v, the relative distance of
   ``first_layer_inputs(v, p)`` to ``span(G_0)``; below ``span_tolerance``: candidate set ``S_p``.
3. **Search**, checking candidate sequences against ``span(G_1)`` (``span_tolerance_2``):

   * GPT-2 (causal attention; :func:`decode_causal`): prefixes grow from ``S_0``; a prefix is
     extended by each token of ``S_p`` whose layer-1 input at p (which depends on the prefix only)
     is in the span. A prefix no extension passes is a sentence. A causal LM client appends EOS;
     EOS's input never enters the span (its output predicts nothing and no later real token
     attends to it, so every gradient through it is zero), so it is appended, not searched.
     Limit: a sentence that is a prefix of another one is not seen (DAGER's too).
   * BERT (bidirectional; :func:`decode_encoder`): position 0 is [CLS]; the lengths are the
     positions where [SEP] passes the filter; a length's middle tokens come from the product of
     its ``S_1 .. S_(l-2)`` (special tokens removed), checked whole (every position's layer-1
     input in the span). Up to ``max_candidates`` combinations this is exhaustive (exact); beyond,
     a beam search position by position: a partial sequence is scored by the mean layer-1
     distance of its known positions with the unknown ones masked out of attention, which is a
     heuristic (no guarantee of finding the sentence). With B = 1 each ``S_p`` has one token.
4. More passing sentences than B: the B with the smallest layer-1 distance are kept. An encoder
   first drops variants (a sequence agreeing on more than half its positions with a closer one
   of the same length: on a pretrained encoder a token swapped in from another sentence barely
   moves the layer-1 inputs), and when it finds fewer than B fills up with its best rejected
   combinations (``details["approximate"]``).

FedAvg (``kind="model_delta"``): the delta's direction sums the gradients of U local steps; each
step's inputs moved slightly (the embeddings train), so the span is approximate. The rank also
counts the later steps' directions (above the float32 rounding floor of ``W_local - W_global``,
estimated from the global weights' ulp), and both tolerances become at least
:data:`FEDAVG_SPAN_TOLERANCE`. On a tiny GPT-2 (d = 128, B = 4, lr 1e-3..1e-1, U <= 8) true
tokens stayed within 2e-2 of the span and foreign tokens / false extensions at >= 0.12.
With several mini-batches and the client's training known (level 3), the first epoch is
replayed step by step (:mod:`gradleak.attacks.dager_replay`).
Client dropout breaks exactness (the attacker evaluates without it): train text clients without.

Defaults (DAGER's published code, ``args_factory.py``): ``span_tolerance`` 1e-5
(``l1_span_thresh``), ``span_tolerance_2`` 1e-3 (``l2_span_thresh``); ``rank_tolerance`` the
float eps (theirs: NumPy's ``max(shape) * eps``, see above); ``max_candidates`` 10^4 instead
of their ``maxC`` 10^7, which is sized for GPUs (each candidate is a forward pass through one
block).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import torch
from torch import nn

from gradleak.attack_settings import DAGERSettings, SpanSettings
from gradleak.attacks import register_attack
from gradleak.attacks.base import Attack, AttackInfo, Observation, Reconstruction
from gradleak.attacks.dager_replay import can_replay, replay_local_steps
from gradleak.attacks.lora_span import adapter_gradient
from gradleak.attacks.transformer_layers import (
    Architecture,
    Span,
    attention_gradient,
    input_dimension,
    layer_inputs,
    position_candidates,
    probe,
    span_distance,
    span_of,
)
from gradleak.errors import GradleakError

FEDAVG_SPAN_TOLERANCE = 3e-2
"""With a model delta, both span tolerances are at least this (see the module docstring)."""
SHARPNESS_FACTOR, SHARPNESS_CAP = 10.0, 1e-2
"""A tolerance is at least ``min(SHARPNESS_FACTOR * span.blur, SHARPNESS_CAP)``: the float32
noise of the gradient moves a token with a small gradient off the estimated span by up to about
``blur`` (see :attr:`Span.blur`); the cap keeps foreign tokens (distance >= 0.1) out."""
ROUNDING_MARGIN = 3.0
"""Singular values of a model delta below this many times its rounding noise's norm are noise."""


def check_text_observation(obs: Observation, who: str) -> tuple[Architecture, int]:
    """The model's architecture and the sequence length L, or a one-line error."""
    arch = probe(obs.model, who=who)
    shape = tuple(obs.input_shape)
    if len(shape) != 2 or shape[0] != 2:
        raise GradleakError(f"{who} needs text inputs [2, L] (ids, attention mask), got {shape}")
    return arch, int(shape[1])


def observed_spans(obs: Observation, arch: Architecture, cfg: SpanSettings, layers: list[int],
                   length: int) -> tuple[list[Span], tuple[float, float], dict[str, Any]]:
    """The spans of the given layers' attention gradients, the (layer-0, layer-1) tolerances in
    force and the details to record (rank, width, bound, feasibility, warnings)."""
    direction = obs.update.gradient_direction()
    delta = obs.update.kind == "model_delta"
    steps = obs.client.local_updates if obs.client is not None else None
    bound = obs.num_samples * length
    cap = bound * steps if delta and steps else (None if delta else bound)
    spans, adapted = [], {}
    eps = torch.finfo(next(iter(direction.values())).dtype).eps
    for k in layers:
        adapter = (None if arch.projection_names(k)[0] in direction
                   else adapter_gradient(obs.model, arch, direction, k))
        if adapter is not None:  # LoRA: the span of A x_t in R^r (gradleak.attacks.lora_span)
            span = span_of(adapter[0].cpu(), tolerance=cfg.rank_tolerance, eps=eps, cap=cap)
            spans.append(dataclasses.replace(span, projection=adapter[1].cpu()))
            adapted[k] = int(adapter[1].shape[0])
            continue
        g = attention_gradient(arch, direction, k)
        floor = rounding_floor(obs.model, arch, k, g.shape) if delta else 0.0
        spans.append(span_of(g.cpu(), tolerance=cfg.rank_tolerance, eps=eps, floor=floor, cap=cap))
    tol = (cfg.span_tolerance, getattr(cfg, "span_tolerance_2", cfg.span_tolerance))
    tol = tuple(max(t, min(SHARPNESS_FACTOR * s.blur, SHARPNESS_CAP))
                for t, s in zip(tol, [*spans, spans[-1]], strict=False))
    if delta:
        tol = (max(tol[0], FEDAVG_SPAN_TOLERANCE), max(tol[1], FEDAVG_SPAN_TOLERANCE))
    r, d = spans[0].rank, arch.width
    reachable = input_dimension(obs.model)
    if 0 in adapted:
        reachable = min(reachable, adapted[0])
    details: dict[str, Any] = {
        "family": arch.family, "kind": obs.update.kind, "rank": r, "width": d,
        "input_dimension": reachable, "ranks": [s.rank for s in spans], "tokens_bound": bound,
        "feasible": r < reachable, "local_updates": steps, "tolerances": list(tol),
        "warnings": []}
    if adapted:
        details["lora"] = {"layers": sorted(adapted), "ranks": [adapted[k] for k in sorted(adapted)]}
        details["warnings"].append(
            f"LoRA update: the span test runs on the inputs projected by the adapters' A (rank "
            f"{adapted.get(0, '?')} at layer 0); it singles out tokens only while the batch holds "
            "fewer (token, position) pairs than that rank")
    if r >= reachable:
        details["warnings"].append(
            f"the first layer's inputs span the whole width (rank {r} of the {reachable} "
            f"dimensions its inputs can take, d {d}; the batch may hold up to {bound} tokens): "
            "the span test accepts every token, so what it returns is not evidence")
    if r == 0:
        details["warnings"].append("the attention gradient is zero: nothing to invert")
    if delta and obs.client is not None and obs.client.optimizer != "sgd":
        details["warnings"].append(f"client.optimizer={obs.client.optimizer} rescales each "
                                   "weight's step: the delta is not a sum of layer gradients and "
                                   "its span need not hold the inputs")
    return spans, tol, details


def rounding_floor(model: nn.Module, arch: Architecture, k: int, shape: torch.Size) -> float:
    """The spectral norm of the float rounding in ``W_local - W_global`` for layer k's
    projections: about ``sigma (sqrt(m) + sqrt(n))`` for i.i.d. errors of ``sigma = ulp / sqrt(12)``,
    the ulp taken at the global weights (known to the server), times :data:`ROUNDING_MARGIN`."""
    params = dict(model.named_parameters())
    ulps = []
    for name in arch.projection_names(k):
        w = params[name].detach().abs()
        ulps.append((torch.nextafter(w, torch.full_like(w, math.inf)) - w).double().flatten())
    sigma = float(torch.cat(ulps).square().mean().sqrt()) / math.sqrt(12)
    return ROUNDING_MARGIN * sigma * (math.sqrt(shape[0]) + math.sqrt(shape[1]))


def candidate_sets(model: nn.Module, span: Span, positions: int, tolerance: float, limit: int,
                   ) -> tuple[list[list[int]], bool]:
    """``S_p`` for p = 0, 1, ... until the first empty one (right padding: no later sentence
    position), each at most ``limit`` ids (the closest); whether a limit was hit."""
    sets, hit = [], False
    for p in range(positions):
        ids, _ = position_candidates(model, span, p, tolerance)
        if ids.numel() == 0:
            break
        hit |= ids.numel() > limit
        sets.append(ids[:limit].tolist())
    return sets, hit


def layer1_distances(model: nn.Module, span: Span, ids: torch.Tensor,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Relative distance of each position's layer-1 input to ``span`` for sequences
    ``ids [n, l]`` (all real unless ``mask``), ``[n, l]``."""
    mask = torch.ones_like(ids) if mask is None else mask
    x = torch.stack([ids, mask], dim=1)
    inputs = layer_inputs(model, x, 1)
    return span_distance(span, inputs.flatten(0, 1)).view(ids.shape)


def decode_causal(model: nn.Module, spans: list[Span], tol: tuple[float, float], length: int,
                  limit: int, *, eos: bool) -> tuple[list[list[int]], list[float], dict[str, Any]]:
    """Greedy prefix extension (see the module docstring): the sentences (ids without EOS),
    each one's largest layer-1 distance, and search details."""
    positions = length - 1 if eos else length
    sets, hit = candidate_sets(model, spans[0], positions, tol[0], limit)
    info: dict[str, Any] = {"candidates_per_position": [len(s) for s in sets]}
    if not sets:
        return [], [], {**info, "max_candidates_hit": hit}
    first = torch.tensor(sets[0]).view(-1, 1)
    d0 = layer1_distances(model, spans[1], first)[:, 0]
    live = [([int(v)], float(d)) for v, d in zip(first[:, 0], d0, strict=True) if d < tol[1]]
    done: list[tuple[list[int], float]] = []
    for p in range(1, len(sets)):
        if not live:
            break
        keep = max(1, limit // len(sets[p]))
        hit |= len(live) > keep
        live = sorted(live, key=lambda s: s[1])[:keep]
        ext = torch.tensor([seq + [c] for seq, _ in live for c in sets[p]])
        dist = layer1_distances(model, spans[1], ext)[:, p].view(len(live), len(sets[p]))
        grown = []
        for (seq, score), row in zip(live, dist, strict=True):
            passing = [(seq + [c], max(score, float(d))) for c, d in zip(sets[p], row, strict=True)
                       if d < tol[1]]
            if passing:
                grown += passing
            else:
                done.append((seq, score))  # no token continues it: the sentence ended here
        live = grown
    done += live
    info["max_candidates_hit"] = hit
    return [s for s, _ in done], [d for _, d in done], info


def decode_encoder(model: nn.Module, spans: list[Span], tol: tuple[float, float], length: int,
                   limit: int, batch: int, *, cls: int, sep: int, special: frozenset[int],
                   ) -> tuple[list[list[int]], list[float], dict[str, Any]]:
    """[CLS] + middle + [SEP] sequences per detected length (see the module docstring):
    accepted ones first (smallest distance), then the best rejected ones up to ``batch``."""
    sets, hit = candidate_sets(model, spans[0], length, tol[0], limit)
    info: dict[str, Any] = {"candidates_per_position": [len(s) for s in sets], "lengths": [],
                            "beam_lengths": []}
    scored: list[tuple[list[int], float]] = []
    for p in range(1, len(sets)):
        if sep not in sets[p]:
            continue
        middle = [[t for t in s if t not in special] for s in sets[1:p]]
        if any(not m for m in middle):
            continue
        info["lengths"].append(p + 1)
        if math.prod(len(m) for m in middle) <= limit:
            combos = [list(c) for c in itertools.product(*middle)]
        else:
            info["beam_lengths"].append(p + 1)
            combos = _beam(model, spans[1], middle, cls=cls, sep=sep, width=max(
                batch, limit // max(1, sum(len(m) for m in middle))))
        seqs = torch.tensor([[cls, *c, sep] for c in combos])
        dist = torch.cat([layer1_distances(model, spans[1], part).max(dim=1).values
                          for part in seqs.split(1024)])
        scored += [(s, float(d)) for s, d in zip(seqs.tolist(), dist, strict=True)]
    scored.sort(key=lambda s: s[1])
    scored = _distinct(scored)
    accepted = [s for s in scored if s[1] < tol[1]]
    fill = [s for s in scored if s[1] >= tol[1]][: max(0, batch - len(accepted))]
    info.update(max_candidates_hit=hit, approximate=len(fill))
    chosen = accepted + fill
    return [s for s, _ in chosen], [d for _, d in chosen], info


def _beam(model: nn.Module, span: Span, middle: list[list[int]], *, cls: int, sep: int,
          width: int) -> list[list[int]]:
    """Beam search over a length's middle tokens, left to right: a partial sequence is scored
    by the mean layer-1 distance of its known positions, the unknown ones masked out."""
    n = len(middle) + 2
    beams: list[list[int]] = [[]]
    for j, cands in enumerate(middle):
        grown = [b + [c] for b in beams for c in cands]
        ids = torch.full((len(grown), n), sep, dtype=torch.long)
        ids[:, 0] = cls
        ids[:, 1: j + 2] = torch.tensor(grown)
        mask = torch.zeros_like(ids)
        mask[:, : j + 2] = 1
        mask[:, -1] = 1
        dist = torch.cat([layer1_distances(model, span, i, m) for i, m in
                          zip(ids.split(1024), mask.split(1024), strict=True)])
        score = (dist * mask).sum(1) / mask.sum(1)
        beams = [grown[i] for i in score.argsort()[:width].tolist()]
    return beams


def _distinct(scored: list[tuple[list[int], float]]) -> list[tuple[list[int], float]]:
    """Drop each sequence that agrees, position by position, on more than half of its tokens
    with a closer one of the same length: a variant of one sentence (a token from another
    sentence swapped in) passes the layer-1 test nearly as well as the sentence itself on a
    pretrained encoder, whose layer-0 output is dominated by each token's own input."""
    kept: list[tuple[list[int], float]] = []
    for seq, d in scored:
        if not any(len(k) == len(seq) and sum(a == b for a, b in zip(k, seq, strict=True)) - 2
                   > (len(seq) - 2) / 2 for k, _ in kept):
            kept.append((seq, d))
    return kept


def pack(rows: list[list[int]], length: int, pad: int) -> torch.Tensor:
    """Id lists as a right-padded text batch ``[M, 2, length]``."""
    out = torch.full((len(rows), 2, length), pad, dtype=torch.long)
    out[:, 1] = 0
    for i, ids in enumerate(rows):
        ids = ids[:length]
        out[i, 0, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        out[i, 1, : len(ids)] = 1
    return out


@register_attack("dager")
class DAGER(Attack):
    """DAGER (Petrov et al., NeurIPS 2024): the batch's sentences from the span of the first two
    attention layers' gradients (see the module docstring)."""

    name = "dager"
    info = AttackInfo(paper="Petrov et al., NeurIPS 2024", strategy="GIA-A", goal="data",
                      modality="text")
    settings = DAGERSettings
    config: DAGERSettings

    def needs(self) -> frozenset:
        return self.requires  # basic information only: the update, the model, B and L

    def prepare_model(self, model: nn.Module, *, input_shape: tuple[int, ...], num_classes: int,
                      seed: int) -> nn.Module:
        self._check_model(model)  # one line before the client trains, not after
        return model

    def _check_model(self, model: nn.Module) -> Architecture:
        who = f"attack {self.name!r}"
        arch = probe(model, who=who)
        if arch.layers < 2:
            raise GradleakError(f"{who} checks sequences on the second attention layer; this "
                                f"model has {arch.layers} layer")
        if arch.family == "bert" and model.task != "classification":
            raise GradleakError(f"{who} inverts BERT classifiers and GPT-2 models; BERT with "
                                f"model.task={model.task} is not supported")
        return arch

    def run(self, obs: Observation, *, seed: int, progress: bool) -> Reconstruction:
        arch, length = check_text_observation(obs, f"attack {self.name!r}")
        self._check_model(obs.model)
        model, tok = obs.model, obs.model.tokenizer
        spans, tol, details = observed_spans(obs, arch, self.config, [0, 1], length)
        eos = arch.family == "gpt2" and tok.append_eos
        if arch.family == "gpt2":
            def decode(weights: nn.Module) -> tuple[list[list[int]], list[float], dict]:
                return decode_causal(weights, spans, tol, length, self.config.max_candidates,
                                     eos=eos)

            rows, scores, search = (replay_local_steps(model, decode, obs.client, length)
                                    if can_replay(obs, eos) else decode(model))
        else:
            rows, scores, search = decode_encoder(
                model, spans, tol, length, self.config.max_candidates, obs.num_samples,
                cls=int(tok.hf.cls_token_id), sep=int(tok.hf.sep_token_id),
                special=tok.special_ids)
        details.update(search, found=len(rows))
        order = sorted(range(len(rows)), key=lambda i: scores[i])[: obs.num_samples]
        details["dropped"] = len(rows) - len(order)
        if details["dropped"]:
            details["warnings"].append(f"{len(rows)} sentences passed, more than the batch's "
                                       f"{obs.num_samples}: kept those closest to the span")
        rows, scores = [rows[i] for i in order], [scores[i] for i in order]
        if eos:
            rows = [r[: length - 1] + [int(tok.eos_id)] for r in rows]
        if not rows:
            details["warnings"].append("no sentence passed the span tests")
            rows = [[int(tok.eos_id)]] if eos else [[int(tok.hf.cls_token_id),
                                                     int(tok.hf.sep_token_id)]]
            scores = [math.inf]
        images = pack(rows, length, tok.pad_id)
        details["span_distances"] = scores
        return Reconstruction(images=images, candidates=images[None],
                              losses=[float(sum(scores) / len(scores))], labels=[], iterations=0,
                              label_source="none", bag=False, details=details)
