"""BN running statistics in a reply: the batch statistics the server derives from them."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("flwr")

import torch  # noqa: E402
from flwr.app import ArrayRecord  # noqa: E402

from gradleak.flower import defense_mod  # noqa: E402
from gradleak.flower.leakage import GlobalModel, probe_config  # noqa: E402
from tests.flower import apps  # noqa: E402

SHAPE = (3, apps.RES, apps.RES)


def derive(reply, arrays, momentum=0.1, config=(), n=None, mean=None, std=None):
    cfg = probe_config("ig", 1, list(config))
    model = GlobalModel.load(lambda: apps.make_bn_model(momentum), arrays, mean=mean, std=std)
    n = n or int(reply.content["metrics"]["num-examples"])
    return model.bn_statistics(cfg, arrays, reply.content["arrays"], num_samples=n,
                               input_shape=SHAPE)


def assert_stats_equal(derived, real):
    assert len(derived) == len(real) == 2
    for (m, v), (m_true, v_true) in zip(derived, real, strict=True):
        assert torch.allclose(m, m_true, atol=1e-5, rtol=1e-4), (m, m_true)
        assert torch.allclose(v, v_true, atol=1e-5, rtol=1e-4), (v, v_true)


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("num_samples", [1, 3])
def test_one_fedsgd_step_gives_the_clients_exact_batch_statistics(momentum, num_samples):
    arrays = ArrayRecord(apps.make_bn_model(momentum).state_dict())
    images, labels = apps.client_data(0, num_samples=num_samples)
    reply, seen = apps.bn_train_steps(apps.train_message(arrays, 1), images, labels,
                                      momentum=momentum)
    bn = derive(reply, arrays, momentum)
    assert bn.granted and bn.steps == 1 and "exact batch statistics" in bn.note
    assert_stats_equal(bn.statistics, seen[0])


def test_a_wrapped_app_model_maps_its_bn_layers_to_the_record_keys():
    arrays = ArrayRecord(apps.make_bn_model().state_dict())
    images, labels = apps.client_data(1, num_samples=2)
    reply, seen = apps.bn_train_steps(apps.train_message(arrays, 1), images, labels)
    bn = derive(reply, arrays, mean=(0.5,) * 3, std=(1.0,) * 3)  # the module is wrapped ("net.")
    assert bn.granted
    assert_stats_equal(bn.statistics, seen[0])


@pytest.mark.parametrize("momentum", [0.1, None])
def test_several_local_steps_give_the_mix_of_their_batches(momentum):
    arrays = ArrayRecord(apps.make_bn_model(momentum).state_dict())
    images, labels = apps.client_data(0, num_samples=4)
    steps, batch = 3, 2
    reply, seen = apps.bn_train_steps(apps.train_message(arrays, 1), images, labels, steps=steps,
                                      batch=batch, momentum=momentum)
    bn = derive(reply, arrays, momentum, n=4,
                config=["client.protocol=fedavg", f"client.batch_size={batch}"])
    assert bn.granted and bn.steps == steps and "mix of 3" in bn.note
    if momentum is None:
        w = [1 / steps] * steps
    else:
        raw = [momentum * (1 - momentum) ** (steps - 1 - j) for j in range(steps)]
        w = [r / sum(raw) for r in raw]
    mix = [(sum(wj * s[layer][0] for wj, s in zip(w, seen, strict=True)),
            sum(wj * s[layer][1] for wj, s in zip(w, seen, strict=True))) for layer in range(2)]
    assert_stats_equal(bn.statistics, mix)
    assert not torch.allclose(seen[0][0][0], seen[1][0][0])  # the batches differ: a real mix


def test_unchanged_or_dropped_buffers_grant_nothing(caplog):
    arrays = ArrayRecord(apps.make_bn_model().state_dict())
    msg = apps.train_message(arrays, 1)
    # BN in eval mode: the running statistics do not move.
    frozen = apps.Message(apps.RecordDict({"arrays": arrays, "metrics": apps.MetricRecord(
        {"num-examples": 1})}), reply_to=msg)
    bn = derive(frozen, arrays)
    assert not bn.granted and "equal the global ones" in bn.note
    # buffers="drop": the reply carries the global buffers, so the server learns nothing.
    out = defense_mod("none", buffers="drop")(msg, apps.context(1, 0), apps.bn_train)
    assert not derive(out, arrays).granted


def test_buffers_that_are_no_bn_update_are_refused_with_a_warning(caplog):
    arrays = ArrayRecord(apps.make_bn_model().state_dict())
    mod = defense_mod("gaussian", noise_multiplier=0.25, buffers="defend")
    out = mod(apps.train_message(arrays, 1), apps.context(1, 0), apps.bn_train)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        bn = derive(out, arrays)
    assert not bn.granted and "not granted" in bn.note and "negative variance" in bn.note
    assert any("not granted" in r.getMessage() for r in caplog.records)


def test_a_model_without_bn_has_nothing_to_derive():
    arrays = ArrayRecord(apps.make_model().state_dict())
    msg, ctx = apps.train_message(arrays, 1), apps.context(1, 0)
    cfg = probe_config("ig", 1, apps.OVERRIDES)
    model = GlobalModel.load(apps.make_model, arrays)
    reply = apps.train(msg, ctx)
    assert model.bn_statistics(cfg, arrays, reply.content["arrays"], num_samples=1,
                               input_shape=SHAPE) is None
