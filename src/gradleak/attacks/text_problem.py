"""What an optimisation attack on text reads off the update and the protocol before it starts:
the sentence length, the positions the protocol fixes, the readout vocabulary and the targets.

Used by TAG and LAMP (:mod:`gradleak.attacks.text_matching`); no ground truth enters it.

* **Length.** Not granted, so read off the update: a learned position embedding's gradient row
  p is non-zero exactly at the positions some real token's loss depends on. A classifier's
  sentence of n tokens gives n contiguous rows; a causal LM's gives n - 1, because its last real
  token (the EOS the client appends) predicts nothing and no earlier token attends to it. The
  rows are counted (not their last index), so an offset of the position ids (RoBERTa's) does not
  matter. Every sentence of the batch takes the longest length (each one's own is not in the
  update). No position embedding in the update, or rows that are not one contiguous block (a
  defense's noise or sparsification): ``L`` with a warning.
* **Fixed tokens.** A causal LM's client appends EOS at ``n - 1``; an encoder's tokenizer wraps
  a sentence in its special tokens ([CLS] at 0, [SEP] at ``n - 1``). Positions from ``n`` on are
  padding.
* **Readout.** Each free position's nearest vocabulary embedding by cosine (LAMP's
  ``get_closest_tokens``), over the vocabulary minus special tokens, or over the token-set
  attack's bag (``attack.vocabulary=bag``, LAMP's ``--use_embedding``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from gradleak.attacks.base import Observation
from gradleak.models.text import IGNORE_INDEX, TextModel

POSITION_NAMES = ("wpe", "position_embeddings")
"""Module names of learned absolute position embeddings (GPT-2; BERT and its relatives)."""


@dataclass
class TextProblem:
    """One batch's shape as the attacker sees it (see the module docstring).

    ``mask``: ``[N, L]`` the attention mask the attack assumes; ``fixed``: position -> token id;
    ``table``: the word embeddings ``[V, d]``; ``allowed``: ``[V]`` which ids a free position may
    read out; ``mean_norm``: the vocabulary's mean embedding norm (LAMP's ``init_size``)."""

    task: str
    length: int
    mask: torch.Tensor
    fixed: dict[int, int]
    table: torch.Tensor
    allowed: torch.Tensor
    pad_id: int
    mean_norm: float
    length_rule: str
    warnings: list[str] = field(default_factory=list)
    unit: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # The unit-norm table, once: readout runs every step (a causal LM's targets).
        self.unit = self.table / self.table.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @property
    def free(self) -> tuple[int, int]:
        """The half-open range of positions the attack optimises (fixed tokens excluded)."""
        lo = 1 if 0 in self.fixed else 0
        hi = self.length - 1 if self.length - 1 in self.fixed else self.length
        return lo, max(lo, hi)

    def readout(self, embeds: torch.Tensor) -> torch.Tensor:
        """The token ids ``[N, L]`` of embeddings ``[N, L, d]``: nearest allowed token by cosine
        at free positions, the fixed ids, padding from ``length`` on."""
        e = embeds.detach()
        sim = (e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)) @ self.unit.T
        sim = sim.masked_fill(~self.allowed, -torch.inf)
        ids = sim.argmax(-1)
        for pos, tid in self.fixed.items():
            ids[:, pos] = tid
        ids[:, self.length:] = self.pad_id
        return ids

    def snap(self, embeds: torch.Tensor) -> torch.Tensor:
        """The embeddings of :meth:`readout`'s tokens (a restart's candidate)."""
        return self.table[self.readout(embeds)]

    def fix(self, embeds: torch.Tensor) -> None:
        """Reset the fixed positions and the padding of ``embeds`` in place."""
        with torch.no_grad():
            for pos, tid in self.fixed.items():
                embeds[..., pos, :] = self.table[tid]
            embeds[..., self.length:, :] = self.table[self.pad_id]

    def batch(self, embeds: torch.Tensor) -> torch.Tensor:
        """The text batch ``[N, 2, L]`` (ids, attention mask) the embeddings read out as."""
        return torch.stack([self.readout(embeds), self.mask.to(embeds.device)], dim=1).cpu()

    def targets(self, ids: torch.Tensor) -> torch.Tensor:
        """A causal LM's loss targets for ids ``[N, L]``: the next tokens, ignored at padding."""
        nxt = ids[:, 1:].clone()
        nxt[self.mask[:, 1:].to(ids.device) == 0] = IGNORE_INDEX
        return nxt


def word_embedding_name(model: TextModel) -> str:
    """The parameter name of the input (word) embedding matrix."""
    weight = model.hf.get_input_embeddings().weight
    return next(n for n, p in model.named_parameters() if p is weight)


def position_embedding_name(model: nn.Module) -> str | None:
    """The parameter name of a learned absolute position embedding, if the model has one."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and name.rsplit(".", 1)[-1] in POSITION_NAMES:
            return f"{name}.weight"
    return None


def infer_length(obs: Observation, model: TextModel) -> tuple[int, str, list[str]]:
    """``(n, rule, warnings)``: the batch's longest sentence length from the position
    embedding's gradient (see the module docstring)."""
    from gradleak.attacks.token_set import nonzero_rows

    full = int(obs.input_shape[1])
    name = position_embedding_name(model)
    gradient = obs.update.gradient_direction().get(name) if name else None
    if gradient is None:
        return full, "full", [f"no position-embedding gradient in the update: every sentence is "
                              f"taken as {full} tokens (data.max_length)"]
    rows = nonzero_rows(gradient)
    count = len(rows)
    contiguous = count > 0 and int(rows.max()) - int(rows.min()) + 1 == count
    causal = model.task == "causal_lm"
    if not contiguous or (causal and count >= full):
        return full, "full", [f"the position-embedding gradient has {count} non-zero rows that "
                              "are not one block of positions (a defense's noise or pruning?): "
                              f"every sentence is taken as {full} tokens"]
    return min(full, count + 1 if causal else count), "position-gradient", []


def fixed_tokens(model: TextModel, length: int) -> dict[int, int]:
    """The positions the protocol fixes: a causal LM's EOS at the end; an encoder's special
    tokens around the sentence (what its tokenizer adds to an empty text)."""
    tok = model.tokenizer
    if model.task == "causal_lm":
        return {length - 1: int(tok.eos_id)} if tok.append_eos and tok.eos_id is not None else {}
    wrap = [int(i) for i in tok.hf("", add_special_tokens=True)["input_ids"]]
    if len(wrap) >= 2 and length >= 2:
        return {0: wrap[0], length - 1: wrap[-1]}
    return {0: wrap[0]} if wrap and length >= 1 else {}


def text_problem(obs: Observation, model: TextModel, *, bag: list[int] | None = None
                 ) -> TextProblem:
    """The :class:`TextProblem` of the observed batch; ``bag``: restrict the readout to these ids
    (the token-set attack's), None for the whole vocabulary."""
    length, rule, warnings = infer_length(obs, model)
    if obs.num_samples > 1 and rule == "position-gradient":
        warnings.append(f"the update gives the longest sentence ({length} tokens), not each one's "
                        f"length: all {obs.num_samples} sentences are optimised at {length} tokens")
    table = model.hf.get_input_embeddings().weight.detach()
    full = int(obs.input_shape[1])
    mask = torch.zeros(obs.num_samples, full, dtype=torch.long, device=table.device)
    mask[:, :length] = 1
    allowed = torch.ones(table.shape[0], dtype=torch.bool, device=table.device)
    if bag is not None:
        allowed[:] = False
        allowed[torch.tensor(bag, dtype=torch.long, device=table.device)] = True
    allowed[list(model.tokenizer.special_ids & set(range(table.shape[0])))] = False
    if not bool(allowed.any()):
        warnings.append("the token bag holds only special tokens: reading out of the whole "
                        "vocabulary")
        allowed[:] = True
        allowed[list(model.tokenizer.special_ids & set(range(table.shape[0])))] = False
    return TextProblem(task=model.task, length=length, mask=mask,
                       fixed=fixed_tokens(model, length), table=table, allowed=allowed,
                       pad_id=model.tokenizer.pad_id, mean_norm=float(table.norm(dim=1).mean()),
                       length_rule=rule, warnings=warnings)
