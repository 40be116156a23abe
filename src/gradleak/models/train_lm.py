"""Train ``gpt2-tiny`` as a causal LM on text data, offline (``gradleak train-lm``).

:func:`~gradleak.models.hf.gpt2_tiny`'s config and seeded init on the WordNet BPE; minibatches of
the *train* split (``wordnet-examples`` by default) drawn from a generator seeded from ``seed``;
the next-token loss of ``text + EOS``, as audited clients train; AdamW, gradient norm clipped at
1, linear warmup over ``warmup`` steps, cosine decay to 10% at ``steps``. ``out`` gets
``train_state.pt`` (tensors and plain containers for ``weights_only=True``) atomically every
``checkpoint_every`` steps, resumed exactly (same machine and threads) when every other setting
matches; a Hugging Face model directory (safetensors, tokenizer, ``config.json`` moved in last)
for ``model.name=gpt2-tiny model.path=OUT`` or ``hf:OUT``; ``training.json`` with the perplexity
on (at most :data:`HELDOUT_SENTENCES` of) the test split, which victims come from.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gradleak.config import DataConfig, ModelConfig
from gradleak.data import build_dataset
from gradleak.errors import GradleakError
from gradleak.io import atomic_write, load_weights, write_json
from gradleak.models.hf import GPT2_POSITIONS, gpt2_tiny
from gradleak.models.hf_load import quiet_transformers
from gradleak.models.text import IGNORE_INDEX, TextModel
from gradleak.progress import tqdm
from gradleak.provenance import versions

STATE = "train_state.pt"
REPORT = "training.json"
HELDOUT_SENTENCES = 256


@dataclasses.dataclass
class LMTraining:
    """Training settings; all but ``checkpoint_every`` must match to resume."""

    steps: int = 2000
    batch_size: int = 32
    max_length: int = 48
    lr: float = 1e-3
    warmup: int = 100
    hidden_size: int = 256
    layers: int = 2
    heads: int = 4
    seed: int = 0
    checkpoint_every: int = 250

    def check(self) -> None:
        least = {"steps": 1, "batch_size": 1, "max_length": 2, "warmup": 0, "hidden_size": 1,
                 "layers": 1, "heads": 1, "seed": 0, "checkpoint_every": 1}
        bad = [f"{k}={getattr(self, k)} (must be >= {v})" for k, v in least.items()
               if getattr(self, k) < v]
        if self.max_length > GPT2_POSITIONS:
            bad.append(f"max_length={self.max_length} (gpt2-tiny has {GPT2_POSITIONS} positions)")
        if self.heads >= 1 and self.hidden_size % self.heads:
            bad.append(f"heads={self.heads} (must divide hidden_size={self.hidden_size})")
        if not (math.isfinite(self.lr) and self.lr > 0):
            bad.append(f"lr={self.lr} (finite, > 0)")
        if bad:
            raise GradleakError(f"bad train-lm settings: {'; '.join(bad)}")

    def lr_factor(self, done: int) -> float:
        """The learning-rate multiplier of the update after ``done`` updates."""
        if done < self.warmup:
            return (done + 1) / self.warmup
        progress = min(1.0, (done - self.warmup) / max(1, self.steps - self.warmup))
        return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))


@dataclasses.dataclass
class LMResult:
    """Trained from ``start_step`` to ``step``; ``report``: training.json; the trained model."""

    out: Path
    start_step: int
    step: int
    report: dict[str, Any]
    model: TextModel = dataclasses.field(repr=False)


@dataclasses.dataclass
class _Run:
    """The training state: model, optimiser, scheduler, sampling RNG, step and losses."""

    model: TextModel
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    rng: torch.Generator
    step: int = 0
    losses: list[float] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def build(cls, settings: LMTraining) -> _Run:
        cfg = ModelConfig(name="gpt2-tiny", hidden_size=settings.hidden_size,
                          layers=settings.layers, heads=settings.heads, task="causal_lm")
        model = gpt2_tiny(cfg, num_classes=0, seed=settings.seed)  # the very same init
        opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda done: settings.lr_factor(done))
        return cls(model, opt, sched, torch.Generator().manual_seed(settings.seed))

    def state(self, settings: LMTraining, identity: dict[str, Any]) -> dict[str, Any]:
        return {"step": self.step, "model": self.model.hf.state_dict(), "optimizer":
                self.opt.state_dict(), "scheduler": self.sched.state_dict(), "rng":
                self.rng.get_state(), "losses": list(self.losses), "seconds": self.seconds,
                "settings": dataclasses.asdict(settings), "data": identity}

    def load(self, state: dict[str, Any]) -> None:
        self.model.hf.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.rng.set_state(state["rng"])
        self.step, self.losses, self.seconds = state["step"], state["losses"], state["seconds"]


def _corpus(data: DataConfig) -> tuple[list[str], list[str], dict[str, Any]]:
    """``(train sentences, held-out test sentences, what identifies the data)``."""
    if data.split != "train":
        raise GradleakError(f"data.split={data.split}: train-lm trains on the train split only "
                            "(and reports perplexity on the test split); drop data.split")
    train = build_dataset(data)
    if getattr(train, "modality", None) != "text":
        raise GradleakError(f"data.dataset={data.dataset} is not a text dataset; use "
                            "wordnet-examples, wordnet or text (data.root=FILE)")
    try:
        heldout = list(build_dataset(dataclasses.replace(data, split="test")).texts)
    except GradleakError:  # e.g. a small file whose test part is empty
        heldout = []
    identity = {k: getattr(data, k) for k in ("dataset", "root", "test_root", "holdout", "text_column")}
    return list(train.texts), heldout[:HELDOUT_SENTENCES], {**identity, "sentences": len(train)}


def _batch(model: TextModel, texts: list[str], max_length: int) -> torch.Tensor:
    x = model.tokenizer.encode(texts, max_length=max_length)
    return x[:, :, : max(2, int(x[:, 1].sum(1).max()))]  # without all-padding columns


def _step(run: _Run, texts: list[str], settings: LMTraining) -> float:
    """One AdamW update on a minibatch drawn with ``run.rng``; returns its loss."""
    idx = torch.randint(len(texts), (settings.batch_size,), generator=run.rng).tolist()
    x = _batch(run.model, [texts[i] for i in idx], settings.max_length)
    loss = F.cross_entropy(run.model(x), run.model.targets(x, None))
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), 1.0)
    run.opt.step()
    run.sched.step()
    return float(loss.detach())


@torch.no_grad()
def perplexity(model: TextModel, texts: list[str], max_length: int) -> tuple[float | None, int]:
    """``(exp(mean next-token NLL of the real tokens) or None, tokens)``; leaves eval mode on."""
    total, count = 0.0, 0
    model.eval()
    for start in range(0, len(texts), 64):
        x = _batch(model, texts[start:start + 64], max_length)
        target = model.targets(x, None)
        total += float(F.cross_entropy(model(x), target, reduction="sum"))
        count += int((target != IGNORE_INDEX).sum())
    return (math.exp(total / count) if count else None), count


def _load_state(path: Path, settings: LMTraining, identity: dict[str, Any]) -> dict[str, Any]:
    state = load_weights(path, f"checkpoint {str(path)!r} (delete it or use --fresh)")
    needed = {"step", "model", "optimizer", "scheduler", "rng", "losses", "seconds", "settings", "data"}
    if not isinstance(state, dict) or needed - state.keys():
        raise GradleakError(f"cannot resume from {str(path)!r}: not a train-lm checkpoint; "
                            "delete it or use --fresh")
    now = dataclasses.asdict(settings)
    changed = [f"{k} {v!r} -> {now.get(k)!r}" for k, v in state["settings"].items()
               if k != "checkpoint_every" and now.get(k) != v]
    changed += [f"data.{k} {state['data'].get(k)!r} -> {v!r}" for k, v in identity.items()
                if state["data"].get(k) != v]
    if changed:
        raise GradleakError(f"{str(path)!r} was trained with other settings ({'; '.join(changed)}):"
                            " use another --out or --fresh to start over")
    return state


def save_model_dir(model: TextModel, out: Path) -> None:
    """``save_pretrained`` into a temporary folder, then each file moved in (config.json last)."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".model-", dir=out))
    try:
        with quiet_transformers():
            model.hf.save_pretrained(tmp, safe_serialization=True)
            model.tokenizer.hf.save_pretrained(tmp)
        umask = os.umask(0)
        os.umask(umask)
        for name in sorted((p.name for p in tmp.iterdir()), key=lambda n: n == "config.json"):
            os.chmod(tmp / name, 0o666 & ~umask)  # outputs are meant to be shared
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def train_lm(data: DataConfig, out: str | Path, settings: LMTraining | None = None, *,
             fresh: bool = False, progress: bool = True,
             log: Callable[[str], None] = lambda _m: None) -> LMResult:
    """Train (or resume training of) ``gpt2-tiny`` on the train split of ``data`` into ``out``;
    ``fresh=True`` ignores an existing ``out/train_state.pt`` and starts again from step 0."""
    settings = settings or LMTraining()
    settings.check()
    out = Path(out)
    texts, heldout, identity = _corpus(data)
    run, state_path = _Run.build(settings), out / STATE
    if state_path.is_file() and not fresh:
        run.load(_load_state(state_path, settings, identity))
        log(f"resuming from step {run.step} of {state_path}")
    start = run.step
    if start >= settings.steps:
        log(f"already trained to step {start} (--steps {settings.steps}): nothing to train")
    base, started = run.seconds, time.perf_counter()  # the model is in train mode since built
    with tqdm(total=settings.steps, initial=start, disable=not progress or start >= settings.steps,
              desc="train-lm", unit="step", dynamic_ncols=True) as bar:
        while run.step < settings.steps:
            run.losses.append(_step(run, texts, settings))
            run.step += 1
            bar.update(1)
            if run.step % 10 == 0 or run.step == settings.steps:
                bar.set_postfix(loss=f"{sum(run.losses[-10:]) / len(run.losses[-10:]):.4g}")
            if run.step % settings.checkpoint_every == 0 or run.step == settings.steps:
                run.seconds = base + time.perf_counter() - started
                atomic_write(state_path, lambda p: torch.save(run.state(settings, identity), p))
    if run.step > start or not (out / "config.json").is_file():
        save_model_dir(run.model, out)
    ppl, tokens = perplexity(run.model, heldout, settings.max_length)
    tail = run.losses[-max(1, min(50, len(run.losses) // 10)):]  # the mean of the last steps
    report = {"model": "gpt2-tiny", "use": f"model.name=gpt2-tiny model.path={out}",
              "settings": dataclasses.asdict(settings), "data": identity, "steps": run.step,
              "loss_first": run.losses[0], "loss_final": sum(tail) / len(tail),
              "heldout": {"split": "test", "sentences": len(heldout), "tokens": tokens,
                          "perplexity": ppl}, "seconds": run.seconds,
              "versions": {**versions(), **{k: version(k) for k in ("transformers", "tokenizers")}}}
    write_json(out / REPORT, report)
    return LMResult(out, start, run.step, report, run.model)

