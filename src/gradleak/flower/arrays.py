"""Flower records <-> gradleak updates.

A Flower ClientApp replies with its full local weights; the *update* it shares is the outgoing
ArrayRecord minus the incoming one (the global weights it received). Only floating-point arrays
form the update: integer or boolean arrays (``num_batches_tracked``) are counters, not weights,
and travel unchanged. Of the float arrays, the model's *buffers* (anything not a trainable
parameter: BN ``running_mean``/``running_var``, other registered buffers) are not trained weights
either; the defense mods leave them as the ``buffers=`` policy says (:data:`BUFFER_POLICIES`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Collection, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message
from flwr.common.constant import ErrorCode

from gradleak.defenses import is_float
from gradleak.errors import GradleakError
from gradleak.update import SharedUpdate

STATE_KEY = "gradleak"  # ConfigRecord in Context.state holding the mods' per-node counters
BUFFER_POLICIES = ("keep", "drop", "defend")
"""What a defense does with the arrays that are not trainable parameters: ``keep`` sends them as
the client computed them (not defended), ``drop`` replaces them by the global model's value (the
key stays, as Flower's strategies and ``load_state_dict`` need every key in every reply; the
server learns nothing from them), ``defend`` treats float buffers as part of the update (the
former behaviour: Gaussian noise then lands on BN's ``running_var``, which can turn negative)."""
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def check_buffer_policy(policy: str) -> str:
    if policy not in BUFFER_POLICIES:
        raise GradleakError(f"bad value {policy!r} for buffers; allowed: {', '.join(BUFFER_POLICIES)}")
    return policy


def is_buffer(key: str, tensor: torch.Tensor, trainable: Collection[str] | None) -> bool:
    """Whether array ``key`` is not a trainable parameter: not in ``trainable`` (the model's
    trainable parameter names) when known, else a non-float array or a BN statistic by name."""
    if trainable is not None:
        return key not in trainable
    return not is_float(tensor) or key.rsplit(".", 1)[-1] in BN_BUFFERS


def to_tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """The arrays of ``record`` as CPU tensors (copies), in the record's key order."""
    return {k: torch.from_numpy(np.array(v.numpy())) for k, v in record.items()}


def to_record(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    # ``ascontiguousarray`` would turn a 0-d counter into shape (1,); ``contiguous`` keeps shapes.
    return ArrayRecord({k: Array(t.detach().cpu().contiguous().numpy().copy())
                        for k, t in tensors.items()})


def array_update(incoming: ArrayRecord, outgoing: ArrayRecord, *, num_samples: int) -> SharedUpdate:
    """``SharedUpdate("model_delta")`` = outgoing - incoming for every floating-point array (in its
    own dtype); other arrays are carried as the client sends them. Keys must match."""
    before, after = to_tensors(incoming), to_tensors(outgoing)
    tensors = {k: (t - before[k] if is_float(t) else t) for k, t in after.items()}
    return SharedUpdate("model_delta", tensors, num_samples)


def apply_update(incoming: ArrayRecord, outgoing: ArrayRecord, update: SharedUpdate) -> ArrayRecord:
    """The reply arrays for a (defended) ``update``: incoming + update for floating-point arrays;
    an array whose update is unchanged keeps the client's exact outgoing value, and non-float
    arrays always do."""
    before, after = to_tensors(incoming), to_tensors(outgoing)
    original = array_update(incoming, outgoing, num_samples=update.num_samples).tensors
    out = ArrayRecord()
    for k, sent in after.items():
        new = update.tensors[k]
        if not is_float(sent) or torch.equal(new, original[k]):
            out[k] = outgoing[k]  # the client's own array, bit for bit
        else:
            out[k] = Array((before[k] + new.to(before[k].dtype)).contiguous().numpy().copy())
    return out


def weighted_mean(incoming: ArrayRecord, outgoings: Sequence[ArrayRecord],
                  weights: Sequence[float]) -> ArrayRecord:
    """``incoming + sum_k w_k (outgoing_k - incoming) / sum_k w_k`` per array: the weighted mean of
    the clients' updates applied to the global arrays (what plain FedAvg would produce), float
    arrays in their dtype, counters averaged in float64 as Flower's FedAvg does."""
    if not outgoings or len(outgoings) != len(weights) or sum(weights) <= 0:
        raise GradleakError("the weighted mean needs at least one reply with a positive weight")
    before, total = to_tensors(incoming), float(sum(weights))
    mean: dict[str, torch.Tensor] = {}
    for record, w in zip(outgoings, weights, strict=True):
        after = to_tensors(record)
        if list(after) != list(before):
            raise GradleakError("a reply's ArrayRecord has other keys than the global arrays")
        for k, t in after.items():
            delta = (t - before[k]).double() * (w / total)
            mean[k] = mean[k] + delta if k in mean else delta
    return to_record({k: (before[k] + d.to(before[k].dtype) if is_float(before[k])
                          else before[k].double() + d) for k, d in mean.items()})


def node_key(ctxt: Context) -> int:
    """Which client this is, for seeding: its ``partition-id`` node config when it has one (stable
    across simulation runs, where node ids are drawn at random), else its node id."""
    partition = ctxt.node_config.get("partition-id")
    return int(partition) if isinstance(partition, int) else int(ctxt.node_id)


def message_seed(seed: int, node_id: int, server_round: int) -> int:
    """The defense seed of one (node, round): independent streams per client and round, so noise
    never repeats across clients or rounds, and reproducible from ``seed``. ``node_id``: the
    client's :func:`node_key`."""
    digest = hashlib.sha256(f"gradleak:{seed}:{node_id}:{server_round}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def server_round(msg: Message, ctxt: Context, counter: str) -> int:
    """The round a train message belongs to: the ``server-round`` the strategy puts in its
    ConfigRecord (Flower's strategies do), else a per-node count of the train messages the mod
    named ``counter`` has seen, kept in ``ctxt.state``."""
    for record in msg.content.config_records.values():
        value = record.get("server-round")
        if isinstance(value, int):
            return value
    state = ctxt.state.config_records.get(STATE_KEY) or ConfigRecord()
    count = int(state.get(counter, 0)) + 1
    state[counter] = count
    ctxt.state[STATE_KEY] = state
    return count


def is_train(msg: Message) -> bool:
    return msg.metadata.message_type.split(".")[0] == "train"


def error_reply(msg: Message, reason: str) -> Message:
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def num_examples(reply: Message, key: str = "num-examples") -> int | None:
    """The sample count a reply declares (``num-examples`` in its one MetricRecord)."""
    for record in reply.content.metric_records.values():
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)
    return None


Transform = Callable[[Message, Context, Message, ArrayRecord, ArrayRecord], Message]


def around_train(name: str, msg: Message, ctxt: Context, call_next: Callable[[Message, Context], Message],
                 transform: Transform) -> Message:
    """Run the ClientApp, then ``transform(msg, ctxt, reply, incoming, outgoing)`` on a train reply
    that carries exactly one ArrayRecord with the incoming keys (else a Flower-style error reply)."""
    if not is_train(msg):
        return call_next(msg, ctxt)
    if len(msg.content.array_records) != 1:
        return error_reply(msg, f"{name} expects exactly one ArrayRecord in the train message, found "
                                f"{len(msg.content.array_records)}")
    incoming = next(iter(msg.content.array_records.values()))
    reply = call_next(msg, ctxt)
    if reply.has_error():
        return reply
    if len(reply.content.array_records) != 1:
        return error_reply(msg, f"{name} expects exactly one ArrayRecord in the reply, found "
                                f"{len(reply.content.array_records)}")
    outgoing = next(iter(reply.content.array_records.values()))
    if list(outgoing.keys()) != list(incoming.keys()):
        return error_reply(msg, f"{name} expects the reply's ArrayRecord to have the keys of the one "
                                "the ClientApp received, in the same order")
    return transform(msg, ctxt, reply, incoming, outgoing)


def replace_arrays(reply: Message, arrays: ArrayRecord) -> None:
    """Put ``arrays`` in place of the reply's one ArrayRecord, under the same key."""
    key = next(iter(reply.content.array_records))
    reply.content[key] = arrays


__all__ = ["BUFFER_POLICIES", "apply_update", "array_update", "message_seed", "to_record",
           "to_tensors", "weighted_mean"]


@contextmanager
def private_rng():
    """Run without disturbing the app's global random state (Scenario seeds the global RNGs)."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)
