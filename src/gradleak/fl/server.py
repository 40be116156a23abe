"""A small, exact FedAvg / FedSGD server around the victim client (paper Sec. 6, App. B iii).

Each round the server samples ``max(1, round(fraction * K))`` of the K clients (seeded), sends
them the global model, and every sampled client runs :func:`~gradleak.fl.client.client_update`
(optionally with client-side DP-SGD) and post-processes its update with the configured defense.
The server then moves the global model to the data-weighted mean of the client models,

    W <- sum_k n_k W_k / sum_k n_k = W + sum_k n_k u_k / sum_k n_k        (u_k = W_k - W, FedAvg)
    W <- W - lr * sum_k n_k g_k / sum_k n_k                              (FedSGD, u_k = g_k)

accumulated in float64 over all sampled clients at once (not as a running average with a fixed
alpha, which weights clients wrongly). Clients are trained one after another on copies of one
global model, so memory stays at a few model copies.

The victim is client 0 (its own few samples). At ``attack_round`` it is always among the sampled
clients and its shared update is captured for the attack. With secure aggregation the server
only learns the aggregate: clients upload ``n_k u_k`` and ``n_k`` under masking (Bonawitz et al.
2017), so the server sees ``sum_k n_k u_k`` and ``sum_k n_k``; the attack then receives
``SharedUpdate(tensors = sum_k n_k u_k / sum_k n_k, num_samples = sum_k n_k)``, the update of a
virtual client holding all sampled clients' data (for FedSGD exactly the gradient of the mean
loss over their union), instead of the victim's own update.

Aggregation lives in :mod:`gradleak.fl.aggregation` (pure functions), client-side DP-SGD in
:mod:`gradleak.fl.dp`; this module runs the rounds.

BatchNorm running statistics are not federated (client updates hold parameters only): use
``model.norm=none``/``group`` or ``client.bn_mode=eval``. Test accuracy is measured with BN in
``client.bn_mode`` (train mode: batch statistics of each test batch).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gradleak.config import ClientConfig, Config, FLConfig
from gradleak.data import build_dataset
from gradleak.data.base import ImageDataset
from gradleak.data.sampling import select_victim_samples
from gradleak.defenses import apply_defense
from gradleak.errors import GradleakError
from gradleak.fl.aggregation import aggregate, apply_update, server_step
from gradleak.fl.client import (
    ClientSetup,
    client_update,
    mixing_plans,
    resolve_bn_mode,
    set_bn_mode,
)
from gradleak.fl.dp import DPSettings, dp_client_update, dp_settings, epsilon, make_accountant
from gradleak.fl.partition import partition_indices
from gradleak.io import atomic_write
from gradleak.progress import tqdm
from gradleak.update import SharedUpdate

# DPSettings, dp_client_update and make_accountant moved to gradleak.fl.dp; importable from here.
__all__ = ["VICTIM", "DPSettings", "Defense", "FLResult", "FederatedRun", "client_seed",
           "dataset_tensors", "dp_client_update", "evaluate", "local_setup", "make_accountant",
           "run_federated", "sample_clients", "save_state", "train_federated"]

VICTIM = 0
Defense = Callable[..., SharedUpdate]


@dataclass
class FLResult:
    """The outcome of :func:`train_federated`.

    ``accuracy[r]``: test accuracy after round r (``accuracy[0]``: the initial model).
    ``attack_state``: the global model the clients received in ``attack_round`` (= checkpoint
    ``round_{attack_round - 1:03d}.pt``). ``observed``: what the attacker sees of the victim in that
    round (its defended update, or the aggregate under secure aggregation), ``observed_setup`` the
    matching client setup and ``observed_indices`` the train indices whose samples it covers.
    ``victim_update`` and ``round_updates`` (every sampled client's defended update in that round)
    are ground truth for audits and tests, not server knowledge under secure aggregation.
    ``epsilon``: DP-SGD epsilon per client that trained (at ``delta``), empty without DP.
    ``observed_mixing``: the victim's MixUp/InstaHide plans in that round (``client.mix``; empty
    without mixing or under secure aggregation), passed to the attacker only when granted.
    """

    accuracy: list[float]
    final_state: dict[str, torch.Tensor]
    attack_round: int
    attack_state: dict[str, torch.Tensor]
    observed: SharedUpdate
    observed_setup: ClientSetup
    observed_indices: list[int]
    victim_update: SharedUpdate
    victim_setup: ClientSetup
    victim_indices: list[int]
    round_updates: dict[int, SharedUpdate]
    sampled: list[list[int]]
    secure_aggregation: bool
    epsilon: dict[int, float] = field(default_factory=dict)
    delta: float | None = None
    checkpoints: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    observed_mixing: list = field(default_factory=list)

    @property
    def final_accuracy(self) -> float:
        return self.accuracy[-1]

    @property
    def victim_epsilon(self) -> float | None:
        return self.epsilon.get(VICTIM)


def client_seed(seed: int, round_: int, client: int) -> int:
    """The seed of client ``client``'s local training in round ``round_`` (shuffling, DP noise);
    the defense's generator uses ``client_seed(...) + 1``; ``client=-1`` seeds client sampling."""
    return int(np.random.SeedSequence([seed, round_, client + 1]).generate_state(1)[0])


def sample_clients(num_clients: int, fraction: float, round_: int, *, seed: int,
                   force: int | None = None) -> list[int]:
    """The ``max(1, round(fraction * K))`` clients of round ``round_`` (seeded, sorted); ``force``
    (the victim in the attack round) replaces the last drawn client if it was not drawn."""
    if not 0 < fraction <= 1:
        raise GradleakError(f"bad value {fraction!r} for fl.fraction: must be in (0, 1]")
    m = max(1, round(fraction * num_clients))
    g = torch.Generator().manual_seed(client_seed(seed, round_, -1))
    chosen = torch.randperm(num_clients, generator=g)[:m].tolist()
    if force is not None and force not in chosen:
        chosen[-1] = force
    return sorted(chosen)


def local_setup(cfg: ClientConfig, num_samples: int) -> ClientSetup:
    """A client's :class:`ClientSetup` (kept for callers; the rule is :meth:`ClientSetup.from_config`)."""
    return ClientSetup.from_config(cfg, num_samples)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, bn_mode: str = "eval",
             batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``images [N, C, H, W]`` (no dropout; BN in ``bn_mode``);
    for a causal LM (logits ``[N, V, L-1]``, targets ``[N, L-1]``) the next-token accuracy over
    the real tokens (targets ``-100`` are padding)."""
    if len(labels) == 0:
        return float("nan")
    set_bn_mode(model, bn_mode, dropout=False)
    device = next(model.parameters()).device
    correct = count = 0
    with torch.no_grad():
        for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
            y = y.to(device)
            real = y != -100
            correct += int(((model(x.to(device)).argmax(1) == y) & real).sum())
            count += int(real.sum())
    return correct / count if count else float("nan")


def dataset_tensors(dataset: ImageDataset,
                    indices: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [n, C, R, R] float32 in [0, 1], labels [n])`` of ``indices`` (all samples if
    None): :meth:`ImageDataset.tensors`, the one conversion every dataset goes through."""
    return dataset.tensors(indices)


def save_state(path: Path, model: nn.Module) -> Path:
    """Write ``model.state_dict()`` atomically (loadable by ``model.checkpoint``)."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_write(path, lambda p: torch.save(state, p))
    return path


def _checked(parts: Sequence[Sequence[int]], fl: FLConfig, dp: DPSettings | None,
             client: ClientConfig) -> tuple[int, DPSettings | None]:
    """Refuse a bad setup before training; returns the attack round and the DP settings."""
    if len(parts) != fl.clients:
        raise GradleakError(f"got {len(parts)} client partitions but fl.clients={fl.clients}")
    if not parts[VICTIM]:
        raise GradleakError("the victim client (client 0) holds no samples")
    if client.mix != "none":  # else the first client too small to mix fails mid-training
        small = [k for k, p in enumerate(parts) if 0 < len(p) < client.mix_k]
        if small:
            raise GradleakError(
                f"client.mix_k={client.mix_k} needs at least {client.mix_k} samples on every "
                f"client (it mixes k distinct ones of a client's own), but client {small[0]} "
                f"holds {len(parts[small[0]])} ({len(small)} such clients); lower client.mix_k or give "
                "the clients more samples (fl.clients, fl.partition, fl.alpha)")
    attack_round = fl.attack_round if fl.attack_round is not None else fl.rounds
    if not 1 <= attack_round <= fl.rounds:
        raise GradleakError(f"bad value {fl.attack_round!r} for fl.attack_round: must be in "
                            f"1..fl.rounds={fl.rounds}")
    if dp is None and fl.dp:  # API callers without a Config: the fl.dp_* aliases
        dp = DPSettings(fl.dp_noise_multiplier, fl.dp_max_grad_norm, fl.dp_delta)
    if dp is not None and not dp.max_grad_norm > 0:
        raise GradleakError(f"bad value {dp.max_grad_norm!r} for defense.dp_max_grad_norm: must be > 0")
    return attack_round, dp


@dataclass
class _Round:
    """One round's defended uploads ``(n_k, update)``, by client, with each client's setup."""

    uploads: list[tuple[int, SharedUpdate]] = field(default_factory=list)
    updates: dict[int, SharedUpdate] = field(default_factory=dict)
    setups: dict[int, ClientSetup] = field(default_factory=dict)
    mixing: dict[int, list] = field(default_factory=dict)  # client.mix: each client's plans


def _train_clients(model: nn.Module, sampled: Sequence[int],
                   data: Sequence[tuple[torch.Tensor, torch.Tensor]], *, client: ClientConfig,
                   dp: DPSettings | None, accountants: dict[int, object], defense: Defense,
                   seed: int, round_: int) -> _Round:
    """Every sampled, non-empty client trains on a copy of ``model`` and defends its update."""
    device = next(model.parameters()).device
    out = _Round()
    for k in sampled:
        x, y = data[k]
        if len(y) == 0:
            continue
        setup = local_setup(client, len(y))
        cseed = client_seed(seed, round_, k)
        out.mixing[k] = mixing_plans(setup, tuple(x.shape[1:]), seed=cseed)
        if dp is None:
            update = client_update(model, x.to(device), y.to(device), setup, seed=cseed,
                                   plans=out.mixing[k])
        else:
            acct = accountants.setdefault(k, make_accountant())
            update = dp_client_update(model, x.to(device), y.to(device), setup, dp, seed=cseed,
                                      accountant=acct)
        update = apply_defense(defense, update, model=model, inputs=x.to(device), round_=round_,
                               generator=torch.Generator().manual_seed(cseed + 1))
        out.uploads.append((len(y), update))
        out.updates[k], out.setups[k] = update, setup
    return out


def train_federated(model: nn.Module, train: ImageDataset, parts: Sequence[Sequence[int]], *,
                    client: ClientConfig, fl: FLConfig, defense: Defense | None = None,
                    test: ImageDataset | None = None, test_indices: Sequence[int] | None = None,
                    seed: int = 0, checkpoint_dir: str | Path | None = None,
                    progress: bool = False, dp: DPSettings | None = None) -> FLResult:
    """Train ``model`` (the global model, updated in place) with FedAvg / FedSGD.

    ``parts[k]``: train indices of client k (client 0 is the victim, see
    :func:`~gradleak.fl.partition.partition_indices`); ``client``: E, B, lr, protocol and BN mode
    of every client (B capped at each client's N); ``fl``: rounds, fraction, attack round, secure
    aggregation and DP (``dp``: DP-SGD training of every client; None: read ``fl.dp``);
    ``defense``: post-processing applied by every client to its update
    before upload. Writes ``round_000.pt`` (initial) .. ``round_{R:03d}.pt`` into
    ``checkpoint_dir`` if given. Empty clients are skipped when sampled.
    """
    started = time.perf_counter()
    attack_round, dp = _checked(parts, fl, dp, client)
    defense = defense or (lambda u, **_kw: u)
    data = [train.tensors(p) for p in parts]
    test_x, test_y = (test.tensors(test_indices) if test is not None
                      else (torch.zeros(0), torch.zeros(0, dtype=torch.long)))
    out_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    checkpoints = [save_state(out_dir / "round_000.pt", model)] if out_dir is not None else []
    accountants: dict[int, object] = {}
    eval_bn = resolve_bn_mode(client.bn_mode, client.protocol)  # BN as the clients train it
    accuracy = [evaluate(model, test_x, test_y, bn_mode=eval_bn)]
    captured: dict[str, object] = {}
    sampled_all: list[list[int]] = []

    bar = tqdm(range(1, fl.rounds + 1), disable=not progress, desc="federated rounds",
               unit="round", dynamic_ncols=True)
    for r in bar:
        sampled = sample_clients(len(parts), fl.fraction, r, seed=seed,
                                 force=VICTIM if r == attack_round else None)
        sampled_all.append(sampled)
        round_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        done = _train_clients(model, sampled, data, client=client, dp=dp,
                              accountants=accountants, defense=defense, seed=seed, round_=r)
        if done.uploads:  # else every sampled client was empty: the model stays as it is
            mean = aggregate([u.tensors for _, u in done.uploads], [n for n, _ in done.uploads])
            apply_update(model, mean, server_step(client.protocol, client.lr))
            if r == attack_round:
                captured.update(state=round_state, updates=done.updates, setups=done.setups,
                                mixing=done.mixing,
                                mean=mean, total=sum(n for n, _ in done.uploads),
                                sampled=[k for k in sampled if k in done.updates])
            accuracy.append(evaluate(model, test_x, test_y, bn_mode=eval_bn))
        else:
            accuracy.append(accuracy[-1])
        if out_dir is not None:
            checkpoints.append(save_state(out_dir / f"round_{r:03d}.pt", model))
        bar.set_postfix(test_acc=f"{accuracy[-1]:.3f}")
    bar.close()
    eps = {k: epsilon(a, dp.delta) for k, a in sorted(accountants.items())} if dp else {}
    return _result(model, parts, captured, client=client, fl=fl, attack_round=attack_round,
                   accuracy=accuracy, sampled=sampled_all, epsilon=eps,
                   delta=dp.delta if dp else None, checkpoints=checkpoints,
                   seconds=time.perf_counter() - started)


def _result(model: nn.Module, parts: Sequence[Sequence[int]], captured: dict, *,
            client: ClientConfig, fl: FLConfig, attack_round: int, **rest) -> FLResult:
    """The :class:`FLResult`: what the attacker observes of the victim in ``attack_round``."""
    victim_update = captured["updates"][VICTIM]
    victim_setup = captured["setups"][VICTIM]
    if fl.secure_aggregation:
        total = captured["total"]
        observed = SharedUpdate(victim_update.kind, captured["mean"], total)
        observed_setup = local_setup(client, total)
        observed_indices = [i for k in captured["sampled"] for i in parts[k]]
    else:
        observed, observed_setup = victim_update, victim_setup
        observed_indices = [int(i) for i in parts[VICTIM]]
    mixing = [] if fl.secure_aggregation else captured["mixing"].get(VICTIM, [])
    return FLResult(
        final_state={k: v.detach().clone() for k, v in model.state_dict().items()},
        attack_round=attack_round, attack_state=captured["state"], observed=observed,
        observed_setup=observed_setup, observed_indices=observed_indices,
        victim_update=victim_update, victim_setup=victim_setup,
        victim_indices=[int(i) for i in parts[VICTIM]], round_updates=captured["updates"],
        secure_aggregation=fl.secure_aggregation, observed_mixing=mixing, **rest)


# --- from a Config ----------------------------------------------------------------------------


@dataclass
class FederatedRun:
    """:func:`run_federated`'s output: the trained global ``model``, the datasets and partition."""

    result: FLResult
    model: nn.Module
    train: ImageDataset
    test: ImageDataset
    parts: list[list[int]]


def run_federated(cfg: Config, *, checkpoint_dir: str | Path | None = None,
                  progress: bool = False, defense: Defense | None = None) -> FederatedRun:
    """Build data, model, partition and defense from ``cfg`` and run :func:`train_federated`.

    Clients train on the train split, accuracy is measured on the test split (a seeded subset of
    ``fl.test_samples``, else all of it). The victim holds ``fl.victim_samples`` (null:
    ``data.num_samples``) samples chosen like a single-client audit's (``data.indices``,
    ``data.distinct_labels``); the rest are split over the other K - 1 clients by
    ``fl.partition``. ``defense`` defaults to ``build_defense(cfg.defense)``.
    """
    from gradleak.defenses import build_defense
    from gradleak.models import build_model
    from gradleak.provenance import seed_everything

    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    train = build_dataset(replace(cfg.data, split="train"))
    test = build_dataset(replace(cfg.data, split="test"))
    text_model = None
    if getattr(train, "modality", None) == "text":  # seen through the model's tokenizer
        from gradleak.models.hf import build_text_model
        from gradleak.models.text import TextTargets

        text_model = build_text_model(cfg.model, num_classes=train.num_classes, seed=cfg.seed)
        train, test = (TextTargets(d.tokenized(text_model.tokenizer, cfg.data.max_length),
                                   text_model) for d in (train, test))
    n_victim = cfg.fl.victim_samples or cfg.data.num_samples
    victim_cfg = replace(cfg.data, split="train", num_samples=n_victim)
    _, _, victim_indices = select_victim_samples(train, victim_cfg, seed=cfg.seed)
    parts = partition_indices(train.targets(), cfg.fl.clients, scheme=cfg.fl.partition,
                              alpha=cfg.fl.alpha, seed=cfg.seed, victim_indices=victim_indices)
    test_indices = None
    if cfg.fl.test_samples is not None and cfg.fl.test_samples < len(test):
        g = torch.Generator().manual_seed(cfg.seed)
        test_indices = sorted(torch.randperm(len(test), generator=g)[:cfg.fl.test_samples].tolist())
    model = (text_model if text_model is not None else build_model(
        cfg.model, num_classes=train.num_classes, channels=train.channels,
        resolution=train.resolution, mean=train.mean, std=train.std)).to(device)
    result = train_federated(model, train, parts, client=cfg.client, fl=cfg.fl,
                             defense=defense or build_defense(cfg.defense), test=test,
                             test_indices=test_indices, seed=cfg.seed,
                             checkpoint_dir=checkpoint_dir, progress=progress,
                             dp=dp_settings(cfg))
    return FederatedRun(result=result, model=model, train=train, test=test, parts=parts)
