"""The client-side leakage guard: attack your own update before it leaves, then decide.

The client is the one party that holds the ground truth, so it can measure how much of its data
the configured server could reconstruct from the update it is about to send (the NVFlare
"relative data leakage" filter, generalised to gradleak's attacks, metrics and defenses). The
guard runs the attack with the knowledge the configured threat model grants plus the BN batch
statistics the reply's buffers reveal (level 4, :mod:`gradleak.flower.bn`), scores the
reconstruction (PSNR/SSIM/LPIPS after matching) and takes the leak rate = the share of samples the
Score flags as leaked (``per_sample["leaked"]``, the project's one criterion). When the leak rate
exceeds ``threshold``, or cannot be measured (no LPIPS weights: the guard cannot clear the update):

* ``on_leak="defend"``: applies the ``fallback`` defense and checks again; if the defended update
  still leaks, the update is withheld;
* ``on_leak="drop"``: withholds the update (an error reply: the strategy counts a failure and
  aggregates the others);
* ``on_leak="report"``: sends it unchanged.

The measured leakage goes back in the reply's MetricRecord (``gradleak-*`` keys, numbers only), or
in the error reason when the update is withheld, so the server can log it without seeing data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from logging import WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import log
from torch import nn

from gradleak.config import Config
from gradleak.errors import GradleakError
from gradleak.flower.arrays import (
    around_train,
    array_update,
    check_buffer_policy,
    error_reply,
    message_seed,
    node_key,
    num_examples,
    replace_arrays,
    server_round,
)
from gradleak.flower.leakage import (
    ConfigSpec,
    GlobalModel,
    Measurement,
    attack_update,
    configured_keys,
    probe_config,
    with_bn_statistics,
)
from gradleak.flower.mods import (
    DefenseSpec,
    check_callable,
    check_seed,
    defend_update,
    resolve_defense,
)

ON_LEAK = ("defend", "drop", "report")
DataFn = Callable[[Message, Context], tuple[torch.Tensor, torch.Tensor]]


def guard_metrics(first: Measurement, final: Measurement, *, fallback: bool,
                  leaked: bool) -> dict[str, float | int]:
    """The numbers the guard adds to the reply's MetricRecord (the same keys on every client, so
    Flower's strategies can aggregate them; LPIPS only when it can be computed)."""
    out: dict[str, float | int] = {
        "gradleak-psnr": float(final.score.psnr),
        "gradleak-ssim": float(final.score.ssim),
        "gradleak-attack-loss": final.loss,
        "gradleak-psnr-initial": float(first.score.psnr),
        "gradleak-fallback": int(fallback),
        "gradleak-leaked": int(leaked),
        "gradleak-bn-statistics": int(final.bn is not None and final.bn.granted),
        "gradleak-bn-prior": float(final.bn_prior),
    }
    # Left out when unknown (a MetricRecord holds numbers only), as LPIPS is.
    if final.leak_rate is not None:
        out["gradleak-leak-rate"] = float(final.leak_rate)
    if first.leak_rate is not None:
        out["gradleak-leak-rate-initial"] = float(first.leak_rate)
    if final.score.lpips is not None:
        out["gradleak-lpips"] = float(final.score.lpips)
    return out


def check_settings(on_leak: str, threshold: float, fallback: DefenseSpec | None, buffers: str) -> None:
    """One-line GradleakErrors for guard settings that cannot work, before any round."""
    if on_leak not in ON_LEAK:
        raise GradleakError(f"bad value {on_leak!r} for on_leak; allowed: {', '.join(ON_LEAK)}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or \
            not 0.0 <= threshold < 1.0:
        raise GradleakError(f"bad value {threshold!r} for threshold: a leak rate in [0, 1)")
    if on_leak == "defend" and fallback is None:
        raise GradleakError("on_leak='defend' needs fallback=, e.g. fallback={'name': 'gaussian', "
                            "'noise_multiplier': 0.01, 'clip_norm': 1.0}")
    check_buffer_policy(buffers)


def check_arguments(model_fn: Any, data_fn: Any, *, seed: Any, bn_statistics: Any,
                    mean: Any, std: Any) -> None:
    """One-line GradleakErrors for arguments that could only fail in a round (a mod cannot
    report an error of its own construction there: the client's round would fail)."""
    check_callable(model_fn, "model_fn", "leakage_guard_mod")
    check_callable(data_fn, "data_fn", "leakage_guard_mod")
    check_seed(seed, "leakage_guard_mod")
    if not isinstance(bn_statistics, bool):
        raise GradleakError(f"bad value {bn_statistics!r} for leakage_guard_mod(bn_statistics=...): "
                            "True or False")
    if (mean is None) != (std is None):
        raise GradleakError("leakage_guard_mod: give both mean and std (the input normalisation "
                            "the app applies), or neither")
    for what, values in (("mean", mean), ("std", std)):
        if values is None:
            continue
        try:  # lists, tuples, arrays or tensors of numbers
            items = [] if isinstance(values, (str, bytes)) else [float(v) for v in values]
        except (TypeError, ValueError):
            items = []
        if len(items) not in (1, 3) or not all(
                math.isfinite(v) and (what == "mean" or v > 0) for v in items):
            raise GradleakError(f"bad value {values!r} for leakage_guard_mod({what}=...): 1 or 3 "
                                f"finite numbers (one per channel){', all > 0' if what == 'std' else ''}")


def measure_reply(cfg: Config, bn_cfg: tuple[Config, float] | None, model: GlobalModel,
                  incoming: ArrayRecord, outgoing: ArrayRecord,
                  truth: tuple[torch.Tensor, torch.Tensor]) -> Measurement:
    """The guard's attack on the update ``outgoing - incoming``, scored against ``truth``; with
    ``bn_cfg`` (BN statistics granted) it uses the BN statistics the reply reveals."""
    n, shape = int(truth[1].shape[0]), tuple(truth[0].shape[1:])
    update = array_update(incoming, outgoing, num_samples=n)
    bn = (model.bn_statistics(cfg, incoming, outgoing, num_samples=n, input_shape=shape)
          if bn_cfg is not None else None)
    return attack_update(cfg, model, update, input_shape=shape, truth=truth, bn=bn, bn_cfg=bn_cfg)


def add_metrics(reply: Message, numbers: dict[str, float | int]) -> None:
    """Add ``numbers`` to the reply's MetricRecord (a new one named ``metrics`` if it has none)."""
    records = reply.content.metric_records
    if records:
        next(iter(records.values())).update(numbers)
    else:
        reply.content["metrics"] = MetricRecord(numbers)


def describe(m: Measurement) -> str:
    lpips = "n/a" if m.score.lpips is None else f"{m.score.lpips:.3f}"
    rate = ("n/a (no leaked flags: LPIPS weights missing)" if m.leak_rate is None
            else f"{m.leak_rate:.2f} ({m.criterion})")
    bn = ", with the reply's BN statistics" if m.bn is not None and m.bn.granted else ""
    return f"leak rate {rate}, psnr {m.score.psnr:.2f} dB, lpips {lpips}{bn}"


def leakage_guard_mod(model_fn: Callable[[], nn.Module], data_fn: DataFn, *, attack: str = "ig",
                      budget: int | None = 200, threshold: float = 0.0, on_leak: str = "defend",
                      fallback: DefenseSpec | None = None, config: ConfigSpec = None,
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      seed: int = 0, buffers: str = "keep", bn_statistics: bool = True) -> Mod:
    """A client mod that attacks the client's own train update and acts when it leaks.

    ``model_fn()`` builds the app's model (state_dict keys = the ArrayRecord keys); ``mean``/
    ``std``: the input normalisation the app applies to its data, when the model itself expects
    normalised inputs. ``data_fn(msg, ctxt)`` returns the samples this round's update was computed
    on, ``(images [N, C, H, W] in [0, 1], labels [N])``. ``attack`` (a gradleak attack name) runs
    ``budget`` iterations (``attack.iterations``); ``config`` adds gradleak config overrides
    (``threat.*``, ``client.*`` = how the app trains, ``metrics.psnr_threshold`` ...). The update
    leaks when its leak rate (share of samples the Score flags ``leaked``) exceeds ``threshold``,
    or when it cannot be measured. ``fallback``: the defense for ``on_leak="defend"`` (as for
    :func:`defense_mod`, with the ``buffers`` policy), seeded like it with ``seed``.
    ``bn_statistics``: grant the attack the BN batch statistics the reply's buffers reveal (the
    server holds them; :func:`~gradleak.flower.leakage.with_bn_statistics`); ``False`` ignores them.
    """
    check_settings(on_leak, threshold, fallback, buffers)
    check_arguments(model_fn, data_fn, seed=seed, bn_statistics=bn_statistics, mean=mean, std=std)
    cfg = probe_config(attack, budget, config)
    bn_cfg = (with_bn_statistics(cfg, explicit_weight="attack.bn" in configured_keys(config))
              if bn_statistics else None)
    defense = resolve_defense(fallback)[1] if fallback is not None else None

    def measure(model: GlobalModel, incoming: ArrayRecord, outgoing: ArrayRecord,
                truth: tuple[torch.Tensor, torch.Tensor]) -> Measurement:
        return measure_reply(cfg, bn_cfg, model, incoming, outgoing, truth)

    def leaks(m: Measurement) -> bool:
        # Unmeasurable (no leaked flags) counts as leaking: the guard cannot clear the update.
        return m.leak_rate is None or m.leak_rate > threshold

    def transform(msg: Message, ctxt: Context, reply: Message, incoming: ArrayRecord,
                  outgoing: ArrayRecord) -> Message:
        images, labels = data_fn(msg, ctxt)
        truth = (torch.as_tensor(images).float(), torch.as_tensor(labels).long())
        declared = num_examples(reply)
        if declared is not None and declared != len(truth[1]):
            return error_reply(msg, f"leakage_guard_mod: data_fn returned {len(truth[1])} samples but "
                                    f"the reply declares num-examples={declared}; data_fn must return "
                                    "the samples this round's update was computed on")
        model = GlobalModel.load(model_fn, incoming, mean=mean, std=std)
        first = measure(model, incoming, outgoing, truth)
        final, sent, used_fallback = first, outgoing, False
        if leaks(first) and on_leak == "drop":
            log(WARNING, "gradleak guard: update withheld, %s", describe(first))
            return error_reply(msg, f"gradleak leakage guard withheld the update: {describe(first)}")
        if leaks(first) and on_leak == "defend":
            s = message_seed(seed, node_key(ctxt), server_round(msg, ctxt, "guard"))
            sent = defend_update(defense, incoming, outgoing, num_samples=first.recon.images.shape[0],
                                 seed=s, buffers=buffers, trainable=model.trainable_keys())
            final, used_fallback = measure(model, incoming, sent, truth), True
            if leaks(final):
                log(WARNING, "gradleak guard: update withheld, still leaking after the fallback: %s",
                    describe(final))
                return error_reply(msg, "gradleak leakage guard withheld the update: it still "
                                        f"leaks after the fallback defense: {describe(final)} "
                                        f"(undefended: {describe(first)})")
            replace_arrays(reply, sent)
        leaked = leaks(final)
        if leaked:
            log(WARNING, "gradleak guard: update leaks (reported only): %s", describe(final))
        add_metrics(reply, guard_metrics(first, final, fallback=used_fallback, leaked=leaked))
        return reply

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        return around_train("leakage_guard_mod", msg, ctxt, call_next, transform)

    mod.__name__ = mod.__qualname__ = f"leakage_guard_mod({attack})"
    return mod


__all__: list[str] = ["leakage_guard_mod"]
