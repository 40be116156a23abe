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


DEFENSE_CASES = [("qsgd", {"bits": 2}), ("topk", {"sparsity": 0.9}),
                 ("gaussian", {"noise_multiplier": 0.05}), ("signsgd", {"scale_sign": True}),
                 ("clip", {"bound": 0.01})]
BN_BUFFER_KEYS = ("1.running_mean", "1.running_var", "1.num_batches_tracked")


@pytest.mark.parametrize("buffers", ["keep", "drop", "defend"])
@pytest.mark.parametrize("name,params", DEFENSE_CASES)
def test_defense_mod_applies_the_defense_function_to_the_update(name, params, buffers):
    arrays = ArrayRecord(bn_net().state_dict())
    msg, ctx = apps.train_message(arrays, node_id=42, server_round=3), apps.context(42, 5)
    plain = shifting_app(msg, ctx).content["arrays"]
    out = defense_mod(name, seed=7, buffers=buffers, **params)(msg, ctx, shifting_app)
    assert not out.has_error()
    sent = to_tensors(out.content["arrays"])

    update = array_update(arrays, plain, num_samples=4)
    if buffers != "defend":  # only the trainable parameters form the defended update
        update = update.replace({k: t for k, t in update.tensors.items() if k not in BN_BUFFER_KEYS})
    gen = torch.Generator().manual_seed(message_seed(7, 5, 3))  # seeded by the partition-id
    expected = DEFENSES.get(name)(update, generator=gen, **params)
    before, client = to_tensors(arrays), to_tensors(plain)
    for k, t in sent.items():
        if k.endswith("num_batches_tracked") and buffers != "drop":  # counters: as sent
            assert t.dtype == torch.int64 and int(t) == int(before[k]) + 3
        elif k in BN_BUFFER_KEYS and buffers == "keep":
            assert torch.equal(t, client[k]), k
        elif k in BN_BUFFER_KEYS and buffers == "drop":
            assert torch.equal(t, before[k]), k
        else:
            assert torch.allclose(t - before[k], expected.tensors[k], atol=1e-6), k
    assert not torch.allclose(sent["3.weight"], client["3.weight"])  # it did act


def bn_reply_after(mod, arrays):
    msg, ctx = apps.train_message(arrays, 1), apps.context(1, 0)
    return to_tensors(mod(msg, ctx, apps.bn_train).content["arrays"]), to_tensors(
        apps.bn_train(msg, ctx).content["arrays"])


def test_gaussian_noise_leaves_bn_buffers_bit_identical_while_the_weights_change():
    arrays = ArrayRecord(apps.make_bn_model().state_dict())
    buffers = [k for k in arrays if k.rsplit(".", 1)[-1] in ("running_mean", "running_var",
                                                               "num_batches_tracked")]
    assert len(buffers) == 6
    sent, plain = bn_reply_after(defense_mod("gaussian", noise_multiplier=0.25), arrays)
    for k in buffers:
        assert torch.equal(sent[k], plain[k]), k
    for k in ("features.0.weight", "features.1.weight", "head.weight"):
        assert not torch.equal(sent[k], plain[k]), k
    # The former behaviour, still available: the noise lands on the running variance.
    defended, _ = bn_reply_after(defense_mod("gaussian", noise_multiplier=0.25, buffers="defend"),
                                 arrays)
    assert not torch.equal(defended["features.1.running_var"], plain["features.1.running_var"])
    print("min running_var with buffers=defend:",
          min(float(defended[k].min()) for k in buffers if k.endswith("running_var")))


class BufferNet(nn.Module):
    """A model with a float buffer that is no BN statistic, and a frozen parameter."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 2)
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)
        self.register_buffer("ema", torch.zeros(2))

    def forward(self, x):
        return self.lin(x) * self.frozen + self.ema


def test_model_fn_tells_trainable_parameters_from_every_other_array():
    arrays = ArrayRecord(BufferNet().state_dict())
    msg, ctx = apps.train_message(arrays, 1), apps.context(1, 0)
    plain = to_tensors(shifting_app(msg, ctx).content["arrays"])
    sent = to_tensors(defense_mod("gaussian", noise_multiplier=0.5, model_fn=BufferNet)(
        msg, ctx, shifting_app).content["arrays"])
    assert torch.equal(sent["ema"], plain["ema"]) and torch.equal(sent["frozen"], plain["frozen"])
    assert not torch.equal(sent["lin.weight"], plain["lin.weight"])
    # Without model_fn only BN statistics are known to be buffers.
    guessed = to_tensors(defense_mod("gaussian", noise_multiplier=0.5)(
        msg, ctx, shifting_app).content["arrays"])
    assert not torch.equal(guessed["ema"], plain["ema"])


def test_a_bad_buffer_policy_fails_in_one_line_naming_it_and_the_allowed_ones():
    with pytest.raises(GradleakError) as err:
        defense_mod("topk", buffers="noise")
    message = str(err.value)
    assert "\n" not in message and "'noise'" in message
    assert all(p in message for p in ("keep", "drop", "defend"))


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
    # Only that defense's keys are listed, not every config key (issue 26).
    with pytest.raises(GradleakError) as err:
        defense_mod("qsgd", bit=4)
    assert str(err.value) == "bad parameter 'bit' for defense qsgd; allowed: bits, levels, per_tensor"
    with pytest.raises(GradleakError, match="for defense none; allowed: none"):
        defense_mod({"name": "none", "sparsity": 0.5})
    with pytest.raises(GradleakError, match="allowed: dp_noise_multiplier, dp_max_grad_norm"):
        defense_mod("dpsgd", noise_multiplier=1.0)
    assert resolve_defense({"name": "topk", "sparsity": 0.5})[0] == "topk"


@pytest.mark.parametrize("kwargs,fragment", [
    ({"seed": "abc"}, "seed=...\\): an integer >= 0"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"model_fn": "Net"}, "model_fn=...\\): a function"),
])
def test_defense_mod_arguments_that_could_only_fail_in_a_round_fail_now(kwargs, fragment):
    with pytest.raises(GradleakError, match=fragment):
        defense_mod("topk", **kwargs)


def test_a_reply_with_other_keys_is_refused_like_flowers_own_mods():
    arrays = ArrayRecord(bn_net().state_dict())

    def renaming_app(msg, ctx):
        return apps.Message(RecordDict({"arrays": ArrayRecord({"x": torch.zeros(2)}),
                                        "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    out = defense_mod("topk")(apps.train_message(arrays, 1), apps.context(1, 0), renaming_app)
    assert out.has_error() and "keys" in out.error.reason


def test_outpost_runs_as_a_mod_on_the_received_weights_and_the_round():
    # Outpost reads only the global weights (its risk) and the round (its decay): a Flower mod
    # has both. Soteria needs the client's inputs and is refused (tests/defenses/test_soteria.py).
    from gradleak.flower.mods import ReceivedWeights

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3))
    arrays = ArrayRecord(net.state_dict())
    for server_round in (1, 2, 3):
        msg, ctx = apps.train_message(arrays, node_id=42, server_round=server_round), apps.context(42, 5)
        plain = shifting_app(msg, ctx).content["arrays"]
        sent = defense_mod("outpost", seed=7)(msg, ctx, shifting_app).content["arrays"]
        update = array_update(arrays, plain, num_samples=4)
        gen = torch.Generator().manual_seed(message_seed(7, 5, server_round))
        expected = DEFENSES.get("outpost")(update, generator=gen, round_=server_round,
                                           model=ReceivedWeights(to_tensors(arrays)))
        before = to_tensors(arrays)
        for k, t in to_tensors(sent).items():
            assert torch.allclose(t - before[k], expected.tensors[k], atol=1e-6), (server_round, k)
