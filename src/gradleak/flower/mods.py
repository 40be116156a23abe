"""Defense mods: gradleak's defenses as Flower client mods.

``ClientApp(mods=[...])`` wraps the app: the FIRST mod in the list is the OUTERMOST, so it sees the
reply LAST. A defense mod computes the update (reply arrays minus the arrays the app received,
float arrays only), applies the defense with a seed derived from ``seed``, the node and the
round (:func:`~gradleak.flower.arrays.message_seed`), and puts incoming + defended update back.

Order relative to Flower's own mods (see ``docs/flower.md``)::

    ClientApp(mods=[secaggplus_mod,            # outermost: masks what the others produced
                    fixedclipping_mod,         # Flower: "the last to operate on params"
                    leakage_guard_mod(...),    # checks the defended update
                    defense_mod("qsgd", bits=4)])  # innermost: first to see the reply

so the defense runs before clipping (QSGD can raise an update's norm; clipping afterwards keeps
the DP sensitivity bound) and SecAgg+ masks the final arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable, Mod

from gradleak.config import load_config
from gradleak.defenses import Defense, build_defense
from gradleak.errors import GradleakError
from gradleak.fl.client import SharedUpdate
from gradleak.flower.arrays import (
    apply_update,
    around_train,
    array_update,
    message_seed,
    node_key,
    num_examples,
    replace_arrays,
    server_round,
)

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
    cfg = load_config(base={"defense": {"name": spec, **params}})
    fn = build_defense(cfg.defense)
    # A dry run on a tiny update: parameter checks that live in the defense fire now, not in round 1.
    fn(SharedUpdate("model_delta", {"probe": torch.ones(4)}, 1), generator=torch.Generator())
    return spec, fn


def defend_update(defense: Defense, incoming: ArrayRecord, outgoing: ArrayRecord, *,
                  num_samples: int, seed: int) -> ArrayRecord:
    """``outgoing`` with its update (float arrays only) replaced by ``defense(update)``."""
    update = array_update(incoming, outgoing, num_samples=num_samples)
    defended = defense(update, generator=torch.Generator().manual_seed(seed))
    return apply_update(incoming, outgoing, defended)


def defense_mod(defense: DefenseSpec, *, seed: int = 0, **params: Any) -> Mod:
    """A client mod applying gradleak's ``defense`` to every train reply's update.

    ``defense_mod("qsgd", bits=4)``, ``defense_mod("topk", sparsity=0.9)``,
    ``defense_mod("gaussian", noise_multiplier=0.01, clip_norm=1.0)``; parameters are the
    ``defense.*`` config keys (``gradleak defenses`` lists them). Randomised defenses draw from
    ``torch.Generator().manual_seed(message_seed(seed, node_key, server_round))`` (``node_key``: the
    node's ``partition-id`` config if set, else its node id). Evaluate and query messages pass
    through.
    """
    name, fn = resolve_defense(defense, **params)
    label = f"defense_mod({name})"

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        def transform(msg: Message, ctxt: Context, reply: Message, incoming: ArrayRecord,
                      outgoing: ArrayRecord) -> Message:
            s = message_seed(seed, node_key(ctxt), server_round(msg, ctxt, label))
            replace_arrays(reply, defend_update(fn, incoming, outgoing,
                                                num_samples=num_examples(reply) or 1, seed=s))
            return reply

        return around_train(label, msg, ctxt, call_next, transform)

    mod.__name__ = label
    mod.__qualname__ = label
    return mod
