"""Train a DCGAN on the adversary's auxiliary data: the generative prior of GIA-L (level 2).

The paper's GIA-L (Sec. 2.3, Def. 2; App. B) uses a DCGAN pretrained on the client's data
distribution. :func:`train_generator` trains :class:`~gradleak.models.generator.DCGANGenerator`
against :class:`~gradleak.models.generator.DCGANDiscriminator` with the non-saturating GAN loss,
Adam(2e-4, betas (0.5, 0.999)), random horizontal flips of the real images and, by default,
DiffAugment (Zhao et al., NeurIPS 2020: the same random colour, translation and cutout applied
to real and generated images before the discriminator), without which the discriminator
memorises a small auxiliary set (640 images for ``skimage``) within a few hundred steps. It
writes into ``out``:

- ``checkpoint.pt``: step, both networks, both optimiser states and the sampling RNG state,
  written atomically every ``checkpoint_every`` steps, at the end and on Ctrl-C. An existing
  checkpoint is resumed automatically, so an interrupted run continues where it stopped and a
  finished one does no extra work (resumed runs are bit-identical to uninterrupted ones on the
  same machine and thread count).
- ``generator.pt``: the generator alone, for ``attack.generator`` (see
  :func:`~gradleak.models.generator.load_generator`).
- ``samples.png``: an 8x8 grid from a fixed noise batch, generator in eval mode (what attacks use).
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from gradleak.config import DataConfig
from gradleak.data import build_dataset
from gradleak.data.base import ImageDataset, TensorImageDataset
from gradleak.errors import GradleakError
from gradleak.io import atomic_write, load_weights
from gradleak.models.generator import DCGANDiscriminator, DCGANGenerator, save_generator
from gradleak.progress import tqdm

CHECKPOINT = "checkpoint.pt"
GENERATOR = "generator.pt"
SAMPLES = "samples.png"


@dataclass
class GeneratorTraining:
    """Training settings; all but ``steps`` and ``checkpoint_every`` must match to resume."""

    steps: int = 3000
    batch_size: int = 64
    latent_dim: int = 128
    width: int = 32
    conditional: bool = False
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    seed: int = 0
    checkpoint_every: int = 250
    augment: bool = True

    def check(self) -> None:
        for key in ("steps", "batch_size", "latent_dim", "width", "checkpoint_every"):
            if getattr(self, key) < 1:
                raise GradleakError(f"bad value {getattr(self, key)} for {key}: must be >= 1")
        if self.lr <= 0 or not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise GradleakError("bad optimiser settings: need lr > 0 and betas in [0, 1)")


@dataclass
class TrainResult:
    """What a call did: trained from ``start_step`` to ``step`` (equal when nothing was left)."""

    start_step: int
    step: int
    generator_path: Path
    samples_path: Path
    seconds: float
    loss_d: float | None = None
    loss_g: float | None = None

    @property
    def did_work(self) -> bool:
        return self.step > self.start_step


_RESUME_FIXED = ("batch_size", "latent_dim", "width", "conditional", "lr", "beta1", "beta2", "seed",
                 "augment")


def _all_images(dataset: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(dataset, TensorImageDataset):
        return dataset.images, dataset.labels
    pairs = [dataset[i] for i in range(len(dataset))]
    return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs], dtype=torch.long)


def diff_augment(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """DiffAugment's colour + translation (1/8) + cutout (1/2) of ``x [B, C, H, W]`` in [0, 1],
    differentiable in ``x``; the draws come from ``rng`` so that resumed runs stay identical."""
    b, _, h, w = x.shape
    dev = x.device  # draws stay on the CPU generator (the same stream on every device)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=rng).to(dev)

    def randint(lo: int, hi: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(lo, hi, shape, generator=rng).to(dev)

    # Colour: brightness, saturation, contrast (Zhao et al.'s ranges, mapped to [0, 1] pixels).
    x = x + (rand(b, 1, 1, 1) - 0.5) * 0.5
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (rand(b, 1, 1, 1) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (rand(b, 1, 1, 1) + 0.5) + mean
    # Translation by up to 1/8 of the side, padding with mid-grey.
    r = max(1, round(h * 0.125))
    shift_y = randint(-r, r + 1, (b, 1, 1))
    shift_x = randint(-r, r + 1, (b, 1, 1))
    rows = (torch.arange(h, device=dev)[None, :, None] + shift_y).clamp(-1, h) + 1
    cols = (torch.arange(w, device=dev)[None, None, :] + shift_x).clamp(-1, w) + 1
    padded = F.pad(x, [1, 1, 1, 1], value=0.5)
    batch = torch.arange(b, device=dev)[:, None, None]
    x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    # Cutout: one mid-grey square of half the side per image.
    size = h // 2
    top = randint(0, h - size + 1, (b, 1, 1))
    left = randint(0, w - size + 1, (b, 1, 1))
    ys, xs = torch.arange(h, device=dev)[None, :, None], torch.arange(w, device=dev)[None, None, :]
    hole = ((ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size))[:, None]
    return torch.where(hole, torch.full_like(x, 0.5), x)


def _data_identity(cfg: DataConfig, dataset: ImageDataset) -> dict[str, Any]:
    return {"dataset": cfg.dataset, "split": cfg.split, "resolution": dataset.resolution,
            "channels": dataset.channels, "num_classes": dataset.num_classes, "root": cfg.root}


def _save_samples(path: Path, generator: DCGANGenerator, noise: torch.Tensor,
                  labels: torch.Tensor | None) -> None:
    was_training = generator.training
    generator.eval()
    dev = next(generator.parameters()).device
    with torch.no_grad():
        images = generator(noise.to(dev), None if labels is None else labels.to(dev)).cpu()
    generator.train(was_training)
    grid = make_grid(images, nrow=8, padding=2, pad_value=1.0)
    atomic_write(path, lambda p: save_image(grid, p, format="png"))


@dataclass
class _GAN:
    """The training state: both networks, their optimisers, the sampling RNG and the fixed
    noise (and labels) of the sample grid."""

    gen: DCGANGenerator
    disc: DCGANDiscriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    rng: torch.Generator
    noise: torch.Tensor
    sample_labels: torch.Tensor | None

    @classmethod
    def build(cls, settings: GeneratorTraining, dataset: ImageDataset,
              device: str = "cpu") -> _GAN:
        num_classes = dataset.num_classes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            gen = DCGANGenerator(settings.latent_dim, dataset.channels, dataset.resolution,
                                 num_classes=num_classes, conditional=settings.conditional,
                                 width=settings.width)
            disc = DCGANDiscriminator(dataset.channels, dataset.resolution, num_classes=num_classes,
                                      conditional=settings.conditional, width=settings.width)
        gen, disc = gen.to(device), disc.to(device)  # built on the CPU: the same init everywhere
        betas = (settings.beta1, settings.beta2)
        opt_g = torch.optim.Adam(gen.parameters(), lr=settings.lr, betas=betas)
        opt_d = torch.optim.Adam(disc.parameters(), lr=settings.lr, betas=betas)
        rng = torch.Generator().manual_seed(settings.seed)
        # A separate stream so the grid shows the same latents at every checkpoint.
        fixed = torch.Generator().manual_seed(settings.seed + 7919)
        noise = torch.randn(64, settings.latent_dim, generator=fixed)
        sample_labels = torch.arange(64) % num_classes if settings.conditional else None
        return cls(gen, disc, opt_g, opt_d, rng, noise, sample_labels)

    def load(self, state: dict[str, Any]) -> int:
        """Restore a checkpoint's state; returns its step."""
        self.gen.load_state_dict(state["generator"])
        self.disc.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.rng.set_state(state["rng"])
        return int(state["step"])

    def save_outputs(self, out: Path, step: int, identity: dict[str, Any]) -> None:
        """``generator.pt`` and ``samples.png``."""
        save_generator(out / GENERATOR, self.gen, step=step, data=identity)
        _save_samples(out / SAMPLES, self.gen, self.noise, self.sample_labels)

    def save_all(self, out: Path, step: int, settings: GeneratorTraining,
                 identity: dict[str, Any]) -> None:
        """The checkpoint (atomically), then the generator and the sample grid."""
        blob = {"step": step, "generator": self.gen.state_dict(),
                "discriminator": self.disc.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(), "rng": self.rng.get_state(),
                "settings": dataclasses.asdict(settings), "data": identity}
        atomic_write(out / CHECKPOINT, lambda p: torch.save(blob, p))
        self.save_outputs(out, step, identity)


def train_generator(data: DataConfig, out: str | Path, settings: GeneratorTraining | None = None, *,
                    fresh: bool = False, progress: bool = True, device: str = "cpu",
                    log: Callable[[str], None] = lambda _m: None) -> TrainResult:
    """Train (or resume training of) a DCGAN on ``data`` (the adversary's auxiliary set) into ``out``.

    ``fresh=True`` ignores an existing ``out/checkpoint.pt`` and starts again from step 0.
    ``device`` is where the networks train (e.g. ``cuda``); every random draw still comes from
    the CPU generator, so the sampled batches, noise and augmentations do not depend on it.
    """
    settings = settings or GeneratorTraining()
    settings.check()
    out = Path(out)
    started = time.perf_counter()
    dataset = build_dataset(data)
    images, labels = _all_images(dataset)
    if len(images) == 0:
        raise GradleakError(f"dataset {data.dataset!r} ({data.split}) is empty: nothing to train on")
    identity = _data_identity(data, dataset)
    gan = _GAN.build(settings, dataset, device)

    step = 0
    ckpt_path = out / CHECKPOINT
    if ckpt_path.is_file() and not fresh:
        state = _load_checkpoint(ckpt_path)
        _check_resumable(ckpt_path, state, settings, identity)
        step = gan.load(state)
        log(f"resuming from step {step} of {ckpt_path}")

    start = step
    if step >= settings.steps:
        if not (out / GENERATOR).is_file() or not (out / SAMPLES).is_file():
            gan.save_outputs(out, step, identity)
        log(f"already trained to step {step} (>= --steps {settings.steps}): nothing to do")
        return TrainResult(start, step, out / GENERATOR, out / SAMPLES, time.perf_counter() - started)

    out.mkdir(parents=True, exist_ok=True)
    step, loss_d, loss_g = _train_loop(gan, images, labels, step, settings, progress=progress,
                                       save=lambda at: gan.save_all(out, at, settings, identity),
                                       log=log, ckpt_path=ckpt_path)
    return TrainResult(start, step, out / GENERATOR, out / SAMPLES, time.perf_counter() - started,
                       float(loss_d.detach()), float(loss_g.detach()))


def _train_loop(gan: _GAN, images: torch.Tensor, labels: torch.Tensor, step: int,
                settings: GeneratorTraining, *, progress: bool, save: Callable[[int], None],
                log: Callable[[str], None], ckpt_path: Path,
                ) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Steps from ``step`` to ``settings.steps``, checkpointing every ``checkpoint_every`` steps,
    at the end and on Ctrl-C; returns the last step and losses."""
    gan.gen.train()
    gan.disc.train()
    loss_d = loss_g = torch.tensor(float("nan"))
    bar = tqdm(total=settings.steps, initial=step, disable=not progress, desc="train-generator",
               unit="step", dynamic_ncols=True)
    aug = (lambda t: diff_augment(t, gan.rng)) if settings.augment else (lambda t: t)
    try:
        with DeferredInterrupt() as interrupt:
            while step < settings.steps:
                loss_d, loss_g = _step(gan.gen, gan.disc, gan.opt_g, gan.opt_d, images, labels,
                                       gan.rng, aug, settings)
                step += 1
                bar.update(1)
                if step % 10 == 0 or step == settings.steps:
                    bar.set_postfix(loss_d=f"{float(loss_d):.4g}", loss_g=f"{float(loss_g):.4g}")
                if step % settings.checkpoint_every == 0 or step == settings.steps:
                    save(step)
                if interrupt.requested:  # Ctrl-C: checkpoint between steps, so resuming is exact
                    if step % settings.checkpoint_every and step != settings.steps:
                        save(step)
                    log(f"interrupted: saved step {step} to {ckpt_path}; run again to resume")
                    raise KeyboardInterrupt
    finally:
        bar.close()
    return step, loss_d, loss_g


def _step(gen: DCGANGenerator, disc: DCGANDiscriminator, opt_g: torch.optim.Optimizer,
          opt_d: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
          rng: torch.Generator, aug: Callable[[torch.Tensor], torch.Tensor],
          settings: GeneratorTraining) -> tuple[torch.Tensor, torch.Tensor]:
    """One discriminator and one generator update; all randomness from ``rng``."""
    batch = settings.batch_size
    idx = torch.randint(len(images), (batch,), generator=rng)
    dev = next(gen.parameters()).device
    real, y = images[idx].to(dev), labels[idx].to(dev)
    flip = (torch.rand(batch, generator=rng) < 0.5).to(dev)
    real = torch.where(flip[:, None, None, None], real.flip(-1), real)
    z = torch.randn(batch, settings.latent_dim, generator=rng).to(dev)
    y_in = y if settings.conditional else None

    fake = gen(z, y_in)
    logits_real, logits_fake = disc(aug(real), y_in), disc(aug(fake.detach()), y_in)
    loss_d = (F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
              + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake)))
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    logits = disc(aug(fake), y_in)  # non-saturating generator loss
    loss_g = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    return loss_d.detach(), loss_g.detach()


class DeferredInterrupt:
    """Within the block, a first Ctrl-C (SIGINT) only sets :attr:`requested`, so the caller can
    finish the current step and checkpoint a consistent state; a second one interrupts at once.
    Outside the main thread (where signals cannot be handled) it does nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    state = load_weights(path, f"checkpoint {str(path)!r} (delete it or use --fresh)")
    needed = ("step", "generator", "discriminator", "opt_g", "opt_d", "rng", "settings", "data")
    if not isinstance(state, dict) or any(k not in state for k in needed):
        raise GradleakError(f"cannot resume from {str(path)!r}: not a train-generator checkpoint; "
                            "delete it or use --fresh")
    return state


def _check_resumable(path: Path, state: dict[str, Any], settings: GeneratorTraining,
                     identity: dict[str, Any]) -> None:
    saved = state["settings"]
    changed = [f"{k} {saved.get(k)!r} -> {getattr(settings, k)!r}" for k in _RESUME_FIXED
               if saved.get(k) != getattr(settings, k)]
    changed += [f"data.{k} {state['data'].get(k)!r} -> {v!r}" for k, v in identity.items()
                if state["data"].get(k) != v]
    if changed:
        raise GradleakError(f"{str(path)!r} was trained with other settings ({'; '.join(changed)}): "
                            "use another --out or --fresh to start over")
