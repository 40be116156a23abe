"""defense_mod: the reply's update is exactly the registered defense applied to it."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.app import ArrayRecord, MetricRecord, RecordDict  # noqa: E402
from torch import nn  # noqa: E402

from gradleak.defenses import DEFENSES  # noqa: E402
from gradleak.errors import GradleakError  # noqa: E402
from gradleak.fl.client import SharedUpdate  # noqa: E402
from gradleak.flower import defense_mod, message_seed  # noqa: E402
from gradleak.flower.arrays import apply_update, array_update, to_tensors  # noqa: E402
from gradleak.flower.mods import resolve_defense  # noqa: E402
from tests.flower import apps  # noqa: E402


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 3))


def shifting_app(msg, ctx):
    """A ClientApp whose float arrays move by a fixed random step and whose counters advance."""
    sd = msg.content["arrays"].to_torch_state_dict()
    gen = torch.Generator().manual_seed(1)
    new = {k: (v + 0.1 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v + 3)
           for k, v in sd.items()}
    return apps.Message(RecordDict({"arrays": ArrayRecord(new),
                                    "metrics": MetricRecord({"num-examples": 4})}), reply_to=msg)


@pytest.mark.parametrize("name,params", [("qsgd", {"bits": 2}), ("topk", {"sparsity": 0.9}),
                                         ("gaussian", {"noise_multiplier": 0.05}),
                                         ("signsgd", {"scale_sign": True}), ("clip", {"bound": 0.01})])
def test_defense_mod_applies_the_defense_function_to_the_float_update(name, params):
    arrays = ArrayRecord(bn_net().state_dict())
    msg, ctx = apps.train_message(arrays, node_id=42, server_round=3), apps.context(42, 5)
    plain = shifting_app(msg, ctx).content["arrays"]
    out = defense_mod(name, seed=7, **params)(msg, ctx, shifting_app)
    assert not out.has_error()
    sent = to_tensors(out.content["arrays"])

    update = array_update(arrays, plain, num_samples=4)
    gen = torch.Generator().manual_seed(message_seed(7, 5, 3))  # seeded by the partition-id
    expected = DEFENSES.get(name)(update, generator=gen, **params)
    before = to_tensors(arrays)
    for k, t in sent.items():
        if k.endswith("num_batches_tracked"):  # counters pass untouched, as the client sent them
            assert t.dtype == torch.int64 and int(t) == int(before[k]) + 3
        else:
            assert torch.allclose(t - before[k], expected.tensors[k], atol=1e-6), k
    assert not torch.allclose(sent["3.weight"], to_tensors(plain)["3.weight"])  # it did act


def test_defense_mod_seeds_differ_per_node_and_round_and_repeat_per_seed():
    arrays = ArrayRecord(bn_net().state_dict())
    mod = defense_mod("gaussian", noise_multiplier=0.1, seed=1)

    def sent(node: int, rnd: int, partition: int | None) -> np.ndarray:
        ctx = apps.context(node, partition)
        if partition is None:
            ctx.node_config = {}
        out = mod(apps.train_message(arrays, node, rnd), ctx, shifting_app)
        return out.content["arrays"]["3.weight"].numpy()

    assert np.array_equal(sent(1, 1, 0), sent(1, 1, 0))
    assert not np.array_equal(sent(1, 1, 0), sent(2, 1, 1))  # another client
    assert not np.array_equal(sent(1, 1, 0), sent(1, 2, 0))  # another round
    # A simulation draws node ids at random: the partition-id keeps runs reproducible.
    assert np.array_equal(sent(1, 1, 0), sent(99, 1, 0))
    assert not np.array_equal(sent(1, 1, None), sent(2, 1, None))  # no partition: the node id


def test_defense_none_and_evaluate_messages_leave_the_reply_bit_identical():
    arrays = ArrayRecord(bn_net().state_dict())
    msg, ctx = apps.train_message(arrays, 3), apps.context(3, 0)
    plain = shifting_app(msg, ctx).content["arrays"]
    out = defense_mod("none")(msg, ctx, shifting_app).content["arrays"]
    for k in plain:
        assert np.array_equal(out[k].numpy(), plain[k].numpy())
    evaluate = apps.train_message(arrays, 3, message_type="evaluate")
    out = defense_mod("topk", sparsity=0.99)(evaluate, ctx, shifting_app).content["arrays"]
    for k in plain:
        assert np.array_equal(out[k].numpy(), plain[k].numpy())


def test_apply_update_round_trips_and_keeps_dtypes():
    arrays = ArrayRecord(bn_net().state_dict())
    plain = shifting_app(apps.train_message(arrays, 1), apps.context(1, 0)).content["arrays"]
    update = array_update(arrays, plain, num_samples=1)
    doubled = update.replace({k: (2 * t if t.is_floating_point() else t) for k, t in update.tensors.items()})
    out = to_tensors(apply_update(arrays, plain, doubled))
    before = to_tensors(arrays)
    assert out["1.num_batches_tracked"].dtype == torch.int64
    assert torch.allclose(out["0.weight"] - before["0.weight"], 2 * update.tensors["0.weight"], atol=1e-6)
    assert isinstance(update, SharedUpdate) and update.kind == "model_delta"


def test_bad_defense_names_and_parameters_fail_in_one_line_up_front():
    with pytest.raises(GradleakError, match="defense"):
        defense_mod("nope")
    with pytest.raises(GradleakError, match="sparsity"):
        defense_mod("topk", sparsity=1.5)
    with pytest.raises(GradleakError, match="unknown config key"):
        defense_mod("qsgd", bitz=4)
    assert resolve_defense({"name": "topk", "sparsity": 0.5})[0] == "topk"


def test_a_reply_with_other_keys_is_refused_like_flowers_own_mods():
    arrays = ArrayRecord(bn_net().state_dict())

    def renaming_app(msg, ctx):
        return apps.Message(RecordDict({"arrays": ArrayRecord({"x": torch.zeros(2)}),
                                        "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    out = defense_mod("topk")(apps.train_message(arrays, 1), apps.context(1, 0), renaming_app)
    assert out.has_error() and "keys" in out.error.reason
