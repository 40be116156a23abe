"""The bag of tokens of a text batch, read off the update (basic information only, level 0).

Two exact rules, chosen from the update itself:

* ``zero-rows`` (untied input embeddings, e.g. BERT, GPT-2 classifiers): row v of the word
  embedding's gradient is the sum of the gradients of v's occurrences, so it is non-zero exactly
  for the tokens in the batch. Padding rows are zero because the attention mask removes padded
  positions from every real token's computation and their own outputs enter no loss. (Taken
  when at most ``B x L`` rows are non-zero; a dense matrix, e.g. from weight decay or noise, falls
  back to the span rule.)
* ``span`` (tied embeddings, e.g. GPT-2's LM head): the head's softmax touches every row, so the
  row test fails; instead a token occurs iff, at some position p, its layer-0 attention input lies
  in the span of the first attention layer's gradient (DAGER's test,
  :mod:`gradleak.attacks.dager`). A causal LM's client ends every sentence with EOS, whose own
  gradient is zero (nothing follows it), so EOS is added by protocol. On a freshly initialised
  GPT-2 (LayerNorm bias 0) the layer-0 inputs are linear in (word, position) up to scale, so a
  batch token may pass at a position where it does not occur, but foreign tokens still do not.

The result is one row ``[1, 2, K]`` of the distinct ids (sorted, special tokens included; the
metrics drop them) with ``bag=True``.
"""

from __future__ import annotations

from typing import Any

import torch

from gradleak.attack_settings import SpanSettings
from gradleak.attacks import register_attack
from gradleak.attacks.base import Attack, AttackInfo, Observation, Reconstruction
from gradleak.attacks.dager import check_text_observation, observed_spans
from gradleak.attacks.lora_span import adapter_names
from gradleak.attacks.transformer_layers import position_candidates

ROW_TOLERANCE = 1e-7
"""An embedding-gradient row counts as non-zero above this times the largest row norm (float32
resolution; rows of absent tokens are exactly zero)."""


def nonzero_rows(gradient: torch.Tensor) -> torch.Tensor:
    """The row indices of ``gradient [V, d]`` whose norm exceeds ``ROW_TOLERANCE`` x the largest."""
    norms = gradient.detach().double().norm(dim=1)
    top = float(norms.max()) if norms.numel() else 0.0
    if top == 0.0:
        return torch.zeros(0, dtype=torch.long)
    return torch.nonzero(norms > ROW_TOLERANCE * top).flatten().cpu()


@register_attack("token-set")
class TokenSet(Attack):
    """The tokens that occur in the client's batch (a bag: no order, no counts)."""

    name = "token-set"
    info = AttackInfo(paper="Petrov et al., NeurIPS 2024 (DAGER's span test); embedding rows: "
                      "Melis et al., IEEE S&P 2019", strategy="GIA-A", goal="tokens",
                      modality="text")
    settings = SpanSettings
    config: SpanSettings

    def needs(self) -> frozenset:
        return self.requires  # basic information only

    def run(self, obs: Observation, *, seed: int, progress: bool) -> Reconstruction:
        arch, length = check_text_observation(obs, f"attack {self.name!r}")
        embedding = obs.update.gradient_direction().get(arch.embedding_name)
        bound = obs.num_samples * length
        details: dict[str, Any] = {"tied": arch.tied, "warnings": []}
        rows = None
        if embedding is not None and not arch.tied:
            rows = nonzero_rows(embedding)
            if len(rows) > bound:
                details["reason"] = (f"{len(rows)} non-zero embedding rows, more than the "
                                     f"{bound} tokens the batch holds: the rows are not sparse")
                rows = None
        if embedding is None:
            details["warnings"].append("the word embedding is not in the update (frozen, or "
                                       "LoRA): no embedding-row leak")
        attention = (all(n in obs.update.tensors for n in arch.projection_names(0))
                     or adapter_names(arch, obs.update.tensors, 0) is not None)
        if rows is not None:
            details["rule"] = "zero-rows"
            ids = sorted(int(i) for i in rows)
        elif not attention:
            details["rule"] = "none"
            details["reason"] = ("neither the word embedding nor layer 0's attention projections "
                                 "are in the update (frozen or adapted by LoRA): the bag of "
                                 "tokens is not readable from it")
            ids = []
        else:
            details["rule"] = "span"
            ids = self._span_tokens(obs, arch, length, details)
            if not details["feasible"]:  # every token passes: the bag says nothing
                why = ("the span test is infeasible here (it accepts every token): no bag is "
                       f"read, instead of all {len(ids)} tokens")
                details["reason"] = f"{details['reason']}; {why}" if "reason" in details else why
                ids = []
        details["found"] = len(ids)
        images = torch.stack([torch.tensor(ids, dtype=torch.long),
                              torch.ones(len(ids), dtype=torch.long)])[None]
        return Reconstruction(images=images, candidates=images[None], losses=[0.0], labels=[],
                              iterations=0, label_source="none", bag=True, details=details)

    def _span_tokens(self, obs: Observation, arch: Any, length: int,
                     details: dict[str, Any]) -> list[int]:
        spans, tol, info = observed_spans(obs, arch, self.config, [0], length)
        details.update(rank=info["rank"], width=info["width"], feasible=info["feasible"],
                       tolerance=tol[0], tokens_bound=info["tokens_bound"])
        details["warnings"] += info["warnings"]
        found: set[int] = set()
        for p in range(length):
            ids, _ = position_candidates(obs.model, spans[0], p, tol[0])
            found |= set(ids.tolist())
        tok = obs.model.tokenizer
        if tok.append_eos and tok.eos_id is not None:
            found.add(int(tok.eos_id))  # every causal-LM sentence ends with it (see module doc)
        return sorted(found)
