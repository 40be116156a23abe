"""The GIA-O engine on a text model's input embeddings: the base of TAG and LAMP.

The free variable is the batch's input embeddings ``[N, L, d]``; the model reads them through
``inputs_embeds`` with the attention mask the attack infers, so restarts, the schedule,
stopping, best-iterate and ranking are the image engine's (:mod:`gradleak.attacks.restart`).
What differs from images:

* the length, fixed tokens and readout come from :mod:`gradleak.attacks.text_problem`;
* targets: a classifier's are the labels (known or inferred, as for images); a causal LM's are
  the next tokens, i.e. the inputs themselves, so the current readout serves as the targets,
  without gradient through the choice (exact at the solution);
* matched layers: every shared parameter but the word embedding. With continuous inputs its
  gradient has no input rows (TAG's and LAMP's code get ``None`` for it through
  ``inputs_embeds``; for GPT-2's tied head it would hold the head's part only);
* scale: TAG's and LAMP's settings were tuned on BERT-base, whose embeddings have mean norm
  1.4 (LAMP's ``init_size``). Adam's steps have the size of the lr whatever the gradient's
  scale, so the lr and the N(0, 1) init are multiplied by ``lr_scale`` (default: the model's
  mean embedding norm / 1.4): the attack then runs in BERT-base's units on any model. Without
  it, lr 0.1 is 5x a coordinate of a fresh GPT-2's embeddings (std 0.02): TAG recovered 0 of 4
  tiny GPT-2 sentences exactly in 400 steps, 2 of 4 with the scale (d = 64, seeds 1-4);
* init: ``attack.init=normal`` N(0, 1) (TAG), or ``randn`` N(0, 1) rescaled to the vocabulary's
  mean embedding norm (LAMP's ``init_size``); the best of ``init_candidates`` draws by
  gradient distance, then the best of as many reorderings of its free positions (LAMP's
  ``get_init``);
* a restart's candidate is its readout's embeddings scored by their own gradient distance, so
  restarts are ranked on the sentences they return; the reconstruction is ``[N, 2, L]`` (ids,
  attention mask).

FedAvg: the delta's direction (one-step approximation); the local steps are not replayed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradleak.attack_settings import EmbeddingSettings
from gradleak.attacks.base import Observation, Reconstruction
from gradleak.attacks.matching import MatchingSetup, matching_setup, resolve_labels, select_layers
from gradleak.attacks.optimization import GradientMatchingAttack
from gradleak.attacks.priors import BatchNormStatistics
from gradleak.attacks.race import RaceRecord
from gradleak.attacks.restart import Candidate, Restart, RunContext, rank
from gradleak.attacks.text_problem import TextProblem, text_problem, word_embedding_name
from gradleak.errors import GradleakError
from gradleak.models.text import TextModel, is_text_model
from gradleak.update import SharedUpdate


def eager_attention(model: TextModel) -> None:
    """Switch the attacker's copy to eager attention: the fused kernels have no double backward."""
    hf = model.hf
    if hasattr(hf, "set_attn_implementation"):
        hf.set_attn_implementation("eager")
    else:  # older transformers
        hf.config._attn_implementation = "eager"


BERT_EMBEDDING_NORM = 1.4
"""BERT-base's mean word-embedding norm, the scale TAG's and LAMP's settings were tuned at."""


class EmbeddingMatchingAttack(GradientMatchingAttack):
    """GIA-O on input embeddings; TAG and LAMP set ``name``, ``info`` and presets."""

    settings = EmbeddingSettings
    config: EmbeddingSettings

    def __init__(self, config: EmbeddingSettings | None = None, **values: Any) -> None:
        super().__init__(config, **values)
        self._problem: TextProblem | None = None
        self._ctx: RunContext | None = None
        self._rng: torch.Generator | None = None

    @property
    def problem(self) -> TextProblem:
        if self._problem is None:
            raise GradleakError(f"attack {self.name!r}: the text problem is set by run()")
        return self._problem

    # -- the run --------------------------------------------------------------------------------

    def run(self, obs: Observation, *, seed: int, progress: bool) -> Reconstruction:
        s = self.engine
        if not is_text_model(obs.model):
            raise GradleakError(f"attack {self.name!r} inverts text models (a TextModel), not "
                                f"{type(obs.model).__name__}")
        if s.learn_labels or s.group > 1 or s.init in ("rand", "gray") or s.bn > 0:
            raise GradleakError(f"attack {self.name!r}: learn_labels, group, bn and init=rand/gray "
                                "are image settings; use init=randn or normal")
        self._rng = torch.Generator().manual_seed(seed + 1)  # reorderings: the attack's stream
        try:
            return super().run(obs, seed=seed, progress=progress)
        finally:
            self._ctx = None

    def matching_setup(self, obs: Observation) -> MatchingSetup:
        """Every shared parameter but the word embedding, matched to the update's direction."""
        setup = matching_setup(obs, self.engine.layers)
        eager_attention(setup.model)
        skip = word_embedding_name(setup.model)
        chosen = [i for i in setup.chosen if setup.all_names[i] != skip]
        if not chosen:
            raise GradleakError(f"attack {self.name!r}: no parameter to match besides the word "
                                "embedding; widen attack.layers")
        by_name = dict(setup.model.named_parameters())
        direction = obs.update.gradient_direction()
        setup.chosen, setup.simulate = chosen, False
        setup.params = [by_name[setup.all_names[i]] for i in chosen]
        setup.target = [direction[setup.all_names[i]].to(setup.device) for i in chosen]
        self._problem = text_problem(obs, setup.model, bag=self._bag(obs))
        return setup

    def adapt(self, defense: Any, observed: SharedUpdate, model: nn.Module) -> None:
        """The adaptive attacker on the tensors this attack matches: the defense's surrogate
        over every matched parameter, the word embedding left out as in :meth:`matching_setup`
        (a top-k mask or norm over a tensor the dummy gradient does not have would misalign)."""
        from gradleak.attacks.adaptive import transform_for
        from gradleak.defenses.surrogate import is_identity

        names = [n for n, _ in model.named_parameters() if n in observed.tensors]
        skip = word_embedding_name(model)
        chosen = [names[i] for i in select_layers(names, self.engine.layers) if names[i] != skip]
        transform = transform_for(defense, observed, chosen)
        self.transform = None if is_identity(transform) else transform

    def _bag(self, obs: Observation) -> list[int] | None:
        if self.engine.vocabulary == "all":
            return None
        from gradleak.attacks.token_set import TokenSet

        found = TokenSet()(obs)
        return [int(i) for i in found.images[0, 0][found.images[0, 1].bool()].tolist()]

    def labels_for(self, obs: Observation, setup: MatchingSetup) -> tuple[torch.Tensor, str]:
        """A classifier's labels as for images; a causal LM's targets are its inputs."""
        if setup.model.task == "causal_lm":
            return torch.zeros(obs.num_samples, dtype=torch.long, device=setup.device), "inputs"
        labels, source = resolve_labels(obs, self.engine.labels)
        return labels.to(setup.device), source

    def context(self, setup: MatchingSetup, obs: Observation, fixed_labels: torch.Tensor | None,
                bn_prior: BatchNormStatistics | None) -> RunContext:
        """The run's context, its lr multiplied by :meth:`scale`."""
        settings = dataclasses.replace(self.engine, lr=self.engine.lr * self.scale())
        self._ctx = RunContext(settings=settings, hooks=self, setup=setup, obs=obs,
                               fixed_labels=fixed_labels, bn_prior=bn_prior)
        return self._ctx

    def scale(self) -> float:
        """``attack.lr_scale``, or the model's mean embedding norm in BERT-base's units."""
        given = self.engine.lr_scale
        return self.problem.mean_norm / BERT_EMBEDDING_NORM if given is None else given

    # -- the engine's hooks ---------------------------------------------------------------------

    def initial(self, obs: Observation, model: TextModel, generator: torch.Generator) -> torch.Tensor:
        """The best of ``init_candidates`` random draws, then of as many reorderings of it."""
        p, ctx = self.problem, self._ctx
        shape = (obs.num_samples, int(obs.input_shape[1]), p.table.shape[1])
        device = p.table.device

        def draw() -> torch.Tensor:
            x = torch.randn(shape, generator=generator).to(device)
            if self.engine.init == "normal":
                x = x * self.scale()
            else:
                x = x / x.norm(dim=-1, keepdim=True) * p.mean_norm
            p.fix(x)
            return x

        best = draw()
        count = self.engine.init_candidates
        if count == 1:
            return best.cpu()
        best_loss = self.score(best, ctx.fixed_labels)
        for _ in range(count - 1):
            x = draw()
            if (loss := self.score(x, ctx.fixed_labels)) < best_loss:
                best, best_loss = x, loss
        lo, hi = p.free
        for _ in range(count):
            order = torch.cat([torch.arange(lo), lo + torch.randperm(hi - lo, generator=generator),
                               torch.arange(hi, shape[1])]).to(device)
            x = best[:, order]
            if (loss := self.score(x, ctx.fixed_labels)) < best_loss:
                best, best_loss = x, loss
        return best.cpu()

    def loss(self, model: TextModel, embeds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The client's training loss on ``embeds`` ``[N, L, d]`` under the inferred mask."""
        p = self.problem
        logits = model.hf(inputs_embeds=embeds, attention_mask=p.mask).logits
        if p.task == "classification":
            return F.cross_entropy(logits, labels)
        targets = p.targets(p.readout(embeds))
        return F.cross_entropy(logits[:, :-1].transpose(1, 2), targets)

    def predict(self, setup: MatchingSetup, obs: Observation, images: torch.Tensor,
                labels: torch.Tensor, order: list[torch.Tensor] | None) -> list[torch.Tensor]:
        loss = self.loss(setup.model, images, labels)
        dummy = list(torch.autograd.grad(loss, setup.params, create_graph=True))
        return dummy if self.transform is None else self.transform(dummy)

    def score(self, embeds: torch.Tensor, labels: torch.Tensor) -> float:
        """The gradient distance of ``embeds`` (no graph kept: init and discrete steps)."""
        setup = self._ctx.setup
        with torch.enable_grad():
            grads = torch.autograd.grad(self.loss(setup.model, embeds, labels), setup.params)
            grads = list(grads) if self.transform is None else self.transform(list(grads))
            return float(self.gradient_distance(grads, setup.target).detach())

    def regularisers(self, images: torch.Tensor, bn_prior: BatchNormStatistics | None) -> torch.Tensor:
        """LAMP's embedding-norm regulariser, ``(mean ||x_i|| - mean ||e_v||)^2`` over the real
        positions (0 unless ``attack.norm_weight``)."""
        w = self.engine.norm_weight
        if w == 0:
            return images.new_zeros(())
        p = self.problem
        norms = images[:, : p.length].norm(dim=-1)
        return w * (norms.mean() - p.mean_norm).square()

    def lr_schedule(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """LAMP's StepLR (x ``lr_gamma`` every ``lr_step`` iterations) where ``lr_gamma < 1``,
        else the engine's own (``lr_decay``)."""
        s = self.engine
        if s.lr_gamma < 1:
            return torch.optim.lr_scheduler.StepLR(opt, step_size=s.lr_step, gamma=s.lr_gamma)
        return super().lr_schedule(opt)

    def plateau_milestones(self) -> list[int] | None:
        return None if self.engine.lr_gamma < 1 else super().plateau_milestones()

    def project(self, images: torch.Tensor) -> torch.Tensor:
        return self.problem.snap(images)

    def post_step(self, it: int, restart: Restart) -> None:
        self.problem.fix(restart.free[0])

    def _reconstruction(self, found: list[Candidate], used: list[int], source: str,
                        history: list[float], race: RaceRecord | None = None) -> Reconstruction:
        p, ranking = self.problem, rank(found, None if race is None else race.tiers)
        batches = torch.stack([p.batch(found[i][0]) for i in ranking])
        labels = found[ranking[0]][1]
        details = {"length": p.length, "length_rule": p.length_rule, "fixed": p.fixed,
                   "vocabulary": int(p.allowed.sum()), "warnings": list(p.warnings)}
        if race is not None:
            details["race"] = race.details(ranking)
        return Reconstruction(images=batches[0], candidates=batches,
                              losses=[found[i][2] for i in ranking], labels=labels.tolist(),
                              iterations=self.engine.iterations, label_source=source,
                              history=history, iterations_used=used, details=details)
