"""Defense mods: gradleak's defenses as Flower client mods.

``ClientApp(mods=[...])`` wraps the app: the FIRST mod in the list is the OUTERMOST, so it sees the
reply LAST. A defense mod computes the update (reply arrays minus the arrays the app received,
float arrays only), applies the defense with a seed derived from ``seed``, the node and the
round (:func:`~gradleak.flower.arrays.message_seed`), and puts incoming + defended update back.

Order relative to Flower's own mods (see ``docs/flower.md``)::

    ClientApp(mods=[fixedclipping_mod,         # outermost; Flower: "the last to operate on params"
                    leakage_guard_mod(...),    # checks the defended update
                    defense_mod("qsgd", bits=4)])  # innermost: first to see the reply

so the defense runs before clipping (QSGD can raise an update's norm; clipping afterwards keeps
the DP sensitivity bound). ``fixedclipping_mod`` is the Message-API one of ``flwr.clientapp.mod``
(``flwr.client.mod``'s is the legacy one and fails on Message-API messages).

Only the trainable parameters are defended by default: BN running statistics, counters and other
buffers are sent as the client computed them (``buffers="keep"``), replaced by the global value
(``"drop"``) or defended with the rest (``"defend"``): :data:`gradleak.flower.arrays.BUFFER_POLICIES`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod
from torch import nn

from gradleak.config import DefenseConfig, load_config
from gradleak.defenses import DEFENSES, Defense, apply_defense, build_defense
from gradleak.errors import GradleakError
from gradleak.flower.arrays import (
    apply_update,
    around_train,
    array_update,
    check_buffer_policy,
    error_reply,
    is_buffer,
    message_seed,
    node_key,
    num_examples,
    private_rng,
    replace_arrays,
    server_round,
    to_tensors,
)
from gradleak.update import SharedUpdate

DefenseSpec = str | Mapping[str, Any] | Callable[..., Any]


def resolve_defense(spec: DefenseSpec, **params: Any) -> tuple[str, Defense]:
    """A defense from a registry name plus parameters (``"qsgd", bits=4``), a mapping
    (``{"name": "topk", "sparsity": 0.9}``) or a callable ``fn(update, *, generator)``. Names and
    parameters are validated like the ``defense.*`` config keys (one-line GradleakError)."""
    if callable(spec) and not isinstance(spec, str):
        if params:
            raise GradleakError("parameters are given with a defense function; bind them yourself")
        return getattr(spec, "__name__", "custom"), spec
    if isinstance(spec, Mapping):
        params = {**{k: v for k, v in spec.items() if k != "name"}, **params}
        spec = spec.get("name", "")
    if not isinstance(spec, str) or not spec:
        raise GradleakError(f"bad defense {spec!r}: give a name, e.g. defense_mod('qsgd', bits=4)")
    allowed = defense_keys(spec)
    bad = next((k for k in params if k not in allowed), None)
    if bad is not None:
        raise GradleakError(f"bad parameter {bad!r} for defense {spec}; allowed: "
                            f"{', '.join(allowed) or 'none (it takes no parameters)'}")
    cfg = load_config(base={"defense": {"name": spec, **params}})
    fn = build_defense(cfg.defense)
    # A dry run on a tiny update: parameter checks that live in the defense fire now, not in
    # round 1; a training-time defense that needs the client's inputs (Soteria) refuses here.
    probe = {"probe": torch.ones(4)}
    apply_defense(fn, SharedUpdate("model_delta", probe, 1), generator=torch.Generator(),
                  model=ReceivedWeights(probe), inputs=None, round_=1)
    return spec, fn


class ReceivedWeights(nn.Module):
    """The global arrays a client received, as a model's parameters under their record keys:
    what a training-time defense that reads only the weights and the round (Outpost) gets in a
    Flower mod, which has no access to the client's inputs."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.arrays = tensors

    def named_parameters(self, *args: Any, **kwargs: Any):  # noqa: ANN201 (nn.Module's API)
        yield from self.arrays.items()


def defense_keys(name: str) -> list[str]:
    """The ``defense.*`` keys defense ``name`` reads: its keyword parameters that are config
    keys, and the keys documented for it (``dpsgd``'s are read by the client's training)."""
    fn = DEFENSES.get(name)  # an unknown name: one line listing the defenses
    kw = {n for n, p in inspect.signature(fn).parameters.items()
          if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return [f.name for f in dataclasses.fields(DefenseConfig) if f.name != "name" and (
        f.name in kw or name in f.metadata.get("help", "").split(":")[0].split("/"))]


def check_seed(seed: Any, who: str) -> None:
    """A seed is an integer >= 0 (it is hashed per node and round: anything else fails later)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise GradleakError(f"bad value {seed!r} for {who}(seed=...): an integer >= 0")


def check_callable(fn: Any, what: str, who: str) -> None:
    if not callable(fn):
        raise GradleakError(f"bad value {fn!r} for {who}({what}=...): a function, e.g. "
                            f"{what}=lambda: Net() or a def")


def defend_update(defense: Defense, incoming: ArrayRecord, outgoing: ArrayRecord, *,
                  num_samples: int, seed: int, buffers: str = "keep",
                  trainable: Collection[str] | None = None, round_: int = 1) -> ArrayRecord:
    """``outgoing`` with its update replaced by ``defense(update)``: the update of the trainable
    parameters (``trainable``: their keys; ``None``: every float array but BN statistics), the
    other arrays as ``buffers`` says (``keep``: the client's, ``drop``: the global ones,
    ``defend``: every float array is defended, as one update)."""
    update = array_update(incoming, outgoing, num_samples=num_samples)
    generator = torch.Generator().manual_seed(seed)
    context = {"model": ReceivedWeights(to_tensors(incoming)), "inputs": None, "round_": round_}
    if check_buffer_policy(buffers) == "defend":
        return apply_update(incoming, outgoing,
                            apply_defense(defense, update, generator=generator, **context))
    kept = {k: t for k, t in update.tensors.items() if is_buffer(k, t, trainable)}
    weights = update.replace({k: t for k, t in update.tensors.items() if k not in kept})
    defended = apply_defense(defense, weights, generator=generator, **context)
    # A buffer's "update" unchanged: apply_update then sends the client's array bit for bit.
    out = apply_update(incoming, outgoing, defended.replace({**defended.tensors, **kept}))
    if buffers == "drop":
        for k in kept:
            out[k] = incoming[k]
    return out


def trainable_keys(model_fn: Callable[[], nn.Module]) -> frozenset[str]:
    """The ``state_dict`` keys of ``model_fn()``'s trainable parameters (built under a private RNG,
    so the app's random state does not move)."""
    with private_rng():
        net = model_fn()
    return frozenset(n for n, p in net.named_parameters() if p.requires_grad)


def defense_mod(defense: DefenseSpec, *, seed: int = 0, buffers: str = "keep",
                model_fn: Callable[[], nn.Module] | None = None, **params: Any) -> Mod:
    """A client mod applying gradleak's ``defense`` to every train reply's update.

    ``defense_mod("qsgd", bits=4)``, ``defense_mod("topk", sparsity=0.9)``,
    ``defense_mod("gaussian", noise_multiplier=0.01, clip_norm=1.0)``; parameters are the
    ``defense.*`` config keys (``gradleak defenses`` lists them). Randomised defenses draw from
    ``torch.Generator().manual_seed(message_seed(seed, node_key, server_round))`` (``node_key``: the
    node's ``partition-id`` config if set, else its node id). Evaluate and query messages pass
    through. Only trainable parameters are defended; ``buffers`` (``keep``, ``drop``, ``defend``,
    see :data:`~gradleak.flower.arrays.BUFFER_POLICIES`) says what happens to the other arrays.
    Which arrays are trainable: ``model_fn()``'s trainable parameters when given (needed for
    buffers other than BN statistics), else every float array but BN running statistics.
    """
    check_buffer_policy(buffers)
    check_seed(seed, "defense_mod")
    if model_fn is not None:
        check_callable(model_fn, "model_fn", "defense_mod")
    name, fn = resolve_defense(defense, **params)
    label = f"defense_mod({name})"
    trainable = trainable_keys(model_fn) if model_fn is not None else None

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        def transform(msg: Message, ctxt: Context, reply: Message, incoming: ArrayRecord,
                      outgoing: ArrayRecord) -> Message:
            missing = sorted(set(trainable or ()) - set(incoming.keys()))
            if missing:
                return error_reply(msg, f"{label}: model_fn's parameter {missing[0]!r} is not in "
                                        "the arrays; model_fn must build the app's model")
            rnd = server_round(msg, ctxt, label)
            s = message_seed(seed, node_key(ctxt), rnd)
            replace_arrays(reply, defend_update(fn, incoming, outgoing, buffers=buffers, round_=rnd,
                                                num_samples=num_examples(reply) or 1, seed=s,
                                                trainable=trainable))
            return reply

        return around_train(label, msg, ctxt, call_next, transform)

    mod.__name__ = label
    mod.__qualname__ = label
    return mod
