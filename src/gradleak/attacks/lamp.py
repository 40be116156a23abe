"""LAMP (Balunović et al., "LAMP: Extracting Text from Gradients with Language Model Priors",
NeurIPS 2022). GIA-O on text with a language-model prior (GIA-L when the prior is used).

Alternates the two steps of the paper's Alg. 1 inside the one GIA-O engine
(:mod:`gradleak.attacks.text_matching`):

* **continuous**: Adam on the input embeddings ``[N, L, d]`` under the cosine (or L1L2)
  gradient distance plus ``norm_weight * (mean ||x_i|| - mean ||e_v||)^2``;
* **discrete**, every ``swap_every`` iterations after ``swap_burnin`` of the run: for each
  sentence, ``swap_candidates`` reorderings of its free positions (the identity, then in turn:
  swap two tokens, move a token, move a span, move a prefix to the end) are scored by the
  gradient distance plus ``lm_weight`` x the prior's log-perplexity of their readout, and the
  best is kept.

The prior (``attack.lm_prior``, :class:`~gradleak.attacks.lm_prior.LanguagePrior`) is auxiliary
text knowledge (level 2). Without one, reorderings are scored by gradient distance alone (the
paper's ablation without perplexity) and the result says so.

Defaults (``configs/attacks/lamp.yaml``), from the published ``lamp_cos.sh`` and
``args_factory.py``: cosine, lr 0.01 with x0.89 every 50 steps, 2 000 steps, ``norm_weight`` 1,
``lm_weight`` 0.2, 200 reorderings every 75 steps after 10 %, the best of 500 random starts and
500 of their permutations. Their ``init_size`` 1.4 is BERT-base's mean embedding norm; here the
target norm is the victim model's own mean. The published code keeps the lowest *total* loss
iterate; the engine's ``keep=best`` keeps the lowest gradient distance.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from gradleak.attacks import register_attack
from gradleak.attacks.base import AttackInfo, Observation, Reconstruction
from gradleak.attacks.lm_prior import LanguagePrior
from gradleak.attacks.restart import Restart
from gradleak.attacks.text_matching import EmbeddingMatchingAttack
from gradleak.threat import Knowledge

MOVES = ("swap", "move-token", "move-span", "move-prefix")


def reorder(kind: str, lo: int, hi: int, length: int, rng: torch.Generator) -> torch.Tensor:
    """A permutation ``[length]`` of positions that changes only the window ``[lo, hi)``
    (LAMP's four moves; the identity where the window is too short for ``kind``)."""
    order = list(range(length))
    window = order[lo:hi]
    n = len(window)

    def pick(k: int) -> int:
        return int(torch.randint(k, (1,), generator=rng))

    if n >= 2 and kind == "swap":
        i, j = pick(n), pick(n)
        window[i], window[j] = window[j], window[i]
    elif n >= 2 and kind == "move-token":
        token = window.pop(pick(n))
        window.insert(pick(n), token)
    elif n >= 3 and kind == "move-span":
        b, e = sorted((pick(n + 1), pick(n + 1)))
        span, rest = window[b:e], window[:b] + window[e:]
        at = pick(len(rest) + 1)
        window = rest[:at] + span + rest[at:]
    elif n >= 2 and kind == "move-prefix":
        cut = 1 + pick(n - 1)
        window = window[cut:] + window[:cut]
    return torch.tensor(order[:lo] + window + order[hi:], dtype=torch.long)


@register_attack("lamp")
class LAMP(EmbeddingMatchingAttack):
    name = "lamp"
    info = AttackInfo(paper="Balunović et al., NeurIPS 2022", strategy="GIA-O",
                      goal="text and labels", modality="text")

    def __init__(self, config: Any = None, **values: Any) -> None:
        super().__init__(config, **values)
        self._prior: LanguagePrior | None = None
        self.swaps = 0

    def uses_prior(self) -> bool:
        return self.engine.lm_weight > 0 and bool(self.engine.lm_prior)

    def needs(self) -> frozenset[Knowledge]:
        needs = set(super().needs())
        if self.uses_prior():
            needs.add(Knowledge.DATA_DISTRIBUTION)
        return frozenset(needs)

    def run(self, obs: Observation, *, seed: int, progress: bool) -> Reconstruction:
        device = next(obs.model.parameters()).device
        self._prior = LanguagePrior(self.engine.lm_prior, device=device) if self.uses_prior() else None
        self.swaps = 0
        try:
            recon = super().run(obs, seed=seed, progress=progress)
        finally:
            self._prior = None
        recon.details["discrete_steps"] = self.swaps
        if self.engine.lm_weight > 0 and not self.engine.lm_prior:
            recon.details["warnings"].append(
                "no language-model prior (attack.lm_prior): reorderings were scored by gradient "
                "distance alone (LAMP without perplexity)")
        return recon

    def post_step(self, it: int, restart: Restart) -> None:
        super().post_step(it, restart)
        s = self.engine
        if s.swap_candidates > 0 and it >= s.swap_burnin * s.iterations and it % s.swap_every == 1:
            self.discrete_step(restart)

    def total(self, embeds: torch.Tensor, labels: torch.Tensor) -> float:
        """Gradient distance plus ``lm_weight`` x the prior's log-perplexity of the readout."""
        loss = self.score(embeds, labels)
        if self._prior is not None:
            tok = self._ctx.setup.model.tokenizer
            batch = self.problem.batch(embeds)
            loss += self.engine.lm_weight * self._prior.nll([tok.decode(r) for r in batch])
        return loss

    def discrete_step(self, restart: Restart) -> None:
        """LAMP's reorderings, sentence by sentence; the best (possibly unchanged) is kept."""
        p, x = self.problem, restart.free[0]
        labels, (lo, hi) = restart.labels_of(restart.free), p.free
        if hi - lo < 2:
            return
        current = x.detach().clone()
        for s in range(current.shape[0]):
            best, best_loss = current, self.total(current, labels)
            for k in range(1, self.engine.swap_candidates):
                order = reorder(MOVES[k % len(MOVES)], lo, hi, current.shape[1], self._rng)
                candidate = current.clone()
                candidate[s] = current[s, order.to(current.device)]
                loss = self.total(candidate, labels)
                if loss < best_loss or math.isnan(best_loss):
                    best, best_loss = candidate, loss
            current = best
        with torch.no_grad():
            x.copy_(current)
        self.swaps += 1
