"""leakage_guard_mod: the client attacks its own update and defends, withholds or reports."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("flwr")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.app import ArrayRecord  # noqa: E402

from gradleak.defenses import DEFENSES  # noqa: E402
from gradleak.errors import GradleakError  # noqa: E402
from gradleak.flower import leakage_guard_mod, message_seed  # noqa: E402
from gradleak.flower.arrays import array_update, to_tensors  # noqa: E402
from tests.flower import apps  # noqa: E402

BUDGET = 100  # IG iterations: ~29 dB on the undefended 16 px MLP update, ~10 dB under the noise below
NOISE = {"name": "gaussian", "noise_multiplier": 0.05}


@pytest.fixture(scope="module")
def arrays() -> ArrayRecord:
    return ArrayRecord(apps.make_model().state_dict())


def run(mod, arrays, node=5, rnd=1, app=apps.train):
    msg, ctx = apps.train_message(arrays, node, rnd), apps.context(node, 0)
    return msg, ctx, mod(msg, ctx, app)


def test_drop_withholds_a_leaking_update_and_says_how_much_leaked(arrays):
    mod = leakage_guard_mod(apps.make_model, apps.data_fn, budget=BUDGET, on_leak="drop")
    _, _, out = run(mod, arrays)
    assert out.has_error()
    reason = out.error.reason
    assert reason.startswith("gradleak leakage guard withheld the update")
    psnr = float(reason.split("psnr ")[1].split(" dB")[0])
    assert psnr >= 18.0 and "leak rate 1.00" in reason


def test_defend_applies_the_fallback_rechecks_and_reports_both_measurements(arrays):
    mod = leakage_guard_mod(apps.make_model, apps.data_fn, budget=BUDGET, on_leak="defend",
                            fallback=NOISE, seed=3)
    msg, ctx, out = run(mod, arrays, node=9, rnd=2)
    assert not out.has_error()
    m = out.content["metrics"]
    assert m["gradleak-fallback"] == 1 and m["gradleak-leaked"] == 0
    assert m["gradleak-leak-rate-initial"] == 1.0 and m["gradleak-leak-rate"] == 0.0
    assert m["gradleak-psnr-initial"] >= 18.0 > m["gradleak-psnr"]
    assert "gradleak-lpips" in m and m["num-examples"] == 1  # the app's own metrics stay
    # The update sent is exactly the fallback defense of the plain update (same seed rule).
    plain = apps.train(msg, ctx).content["arrays"]
    update = array_update(arrays, plain, num_samples=1)
    gen = torch.Generator().manual_seed(message_seed(3, 0, 2))  # partition 0, round 2
    expected = DEFENSES.get("gaussian")(update, generator=gen, noise_multiplier=0.05)
    sent, before = to_tensors(out.content["arrays"]), to_tensors(arrays)
    for k in sent:
        assert torch.allclose(sent[k] - before[k], expected.tensors[k], atol=1e-6)


def test_defend_withholds_when_the_fallback_does_not_stop_the_leak(arrays):
    weak = {"name": "clip", "bound": 10.0}  # clamps nothing: the update stays as leaky
    mod = leakage_guard_mod(apps.make_model, apps.data_fn, budget=BUDGET, on_leak="defend",
                            fallback=weak)
    _, _, out = run(mod, arrays)
    assert out.has_error() and "still leaks after the fallback" in out.error.reason


def test_report_sends_the_update_unchanged_and_flags_it(arrays):
    mod = leakage_guard_mod(apps.make_model, apps.data_fn, budget=BUDGET, on_leak="report")
    msg, ctx, out = run(mod, arrays)
    plain = apps.train(msg, ctx).content["arrays"]
    for k in plain:
        assert np.array_equal(out.content["arrays"][k].numpy(), plain[k].numpy())
    m = out.content["metrics"]
    assert m["gradleak-leaked"] == 1 and m["gradleak-fallback"] == 0
    assert m["gradleak-psnr"] == m["gradleak-psnr-initial"] >= 18.0


def test_a_non_leaking_update_passes_untouched_with_its_measurement(arrays):
    # With a 1-iteration attack nothing is reconstructed: no leak, no fallback.
    mod = leakage_guard_mod(apps.make_model, apps.data_fn, budget=1, on_leak="defend",
                            fallback=NOISE)
    msg, ctx, out = run(mod, arrays)
    m = out.content["metrics"]
    assert m["gradleak-leak-rate"] == 0.0 and m["gradleak-fallback"] == 0
    plain = apps.train(msg, ctx).content["arrays"]
    assert all(np.array_equal(out.content["arrays"][k].numpy(), plain[k].numpy()) for k in plain)


def test_the_guard_does_not_disturb_the_apps_random_state(arrays):
    mod = leakage_guard_mod(apps.make_model, apps.data_fn, budget=1, on_leak="report")

    def draws_after(app_call):
        torch.manual_seed(123)
        np.random.seed(7)
        app_call()
        return torch.rand(3), np.random.rand(3)

    plain = draws_after(lambda: apps.train(apps.train_message(arrays, 5), apps.context(5, 0)))
    guarded = draws_after(lambda: run(mod, arrays))
    assert torch.equal(plain[0], guarded[0]) and np.array_equal(plain[1], guarded[1])


@pytest.mark.parametrize("kwargs,fragment", [
    ({"on_leak": "explode"}, "on_leak"),
    ({"threshold": 1.5}, "threshold"),
    ({"on_leak": "defend"}, "fallback"),
    ({"attack": "nope", "on_leak": "report"}, "attack"),
    ({"on_leak": "report", "config": ["threat.malicious=true"]}, "passive"),
    ({"on_leak": "report", "config": {"client": {"protocol": "fedsgdd"}}}, "client.protocol"),
    # arguments that used to fail only in a round (issue 26)
    ({"on_leak": "report", "threshold": "0.1"}, "threshold"),
    ({"on_leak": "report", "seed": "x"}, "seed=...\\): an integer >= 0"),
    ({"on_leak": "report", "bn_statistics": "yes"}, "bn_statistics"),
    ({"on_leak": "report", "mean": [0.5]}, "both mean and std"),
    ({"on_leak": "report", "mean": [0.5, 0.5], "std": [0.2, 0.2]}, "1 or 3 finite numbers"),
    ({"on_leak": "report", "mean": [0.5], "std": [0.0]}, "all > 0"),
    ({"on_leak": "report", "mean": "0.5", "std": [0.2]}, "mean=..."),
    ({"on_leak": "defend", "fallback": {"name": "qsgd", "bit": 2}}, "allowed: bits, levels"),
])
def test_bad_guard_settings_fail_in_one_line_before_any_round(kwargs, fragment):
    with pytest.raises(GradleakError, match=fragment):
        leakage_guard_mod(apps.make_model, apps.data_fn, **kwargs)
    with pytest.raises(GradleakError, match="data_fn=...\\): a function"):
        leakage_guard_mod(apps.make_model, [1, 2], on_leak="report")
    with pytest.raises(GradleakError, match="model_fn=...\\): a function"):
        leakage_guard_mod(None, apps.data_fn, on_leak="report")


def test_data_fn_must_return_the_samples_the_reply_declares(arrays):
    def two_samples(msg, ctx):
        return apps.client_data(0, num_samples=2)

    mod = leakage_guard_mod(apps.make_model, two_samples, budget=1, on_leak="report")
    _, _, out = run(mod, arrays)
    assert out.has_error() and "num-examples=1" in out.error.reason


def test_the_guard_grants_the_bn_statistics_the_reply_reveals(observed):
    from gradleak.fl.client import capture_bn_statistics
    from gradleak.threat import Knowledge

    arrays = ArrayRecord(apps.make_bn_model().state_dict())
    mod = leakage_guard_mod(apps.make_bn_model, apps.data_fn, budget=5, on_leak="report",
                            config=apps.OVERRIDES)
    msg, ctx, out = run(mod, arrays, app=apps.bn_train)
    m = out.content["metrics"]
    assert m["gradleak-bn-statistics"] == 1 and m["gradleak-bn-prior"] == 0.1
    (obs,) = observed
    assert obs.threat.grants(Knowledge.BN_STATISTICS) and obs.bn_mode == "train"
    real = capture_bn_statistics(apps.make_bn_model().train(), apps.data_fn(msg, ctx)[0])
    for (mu, var), (mu_t, var_t) in zip(obs.bn_statistics, real, strict=True):
        assert torch.allclose(mu, mu_t, atol=1e-5) and torch.allclose(var, var_t, atol=1e-5)

    observed.clear()
    off = leakage_guard_mod(apps.make_bn_model, apps.data_fn, budget=5, on_leak="report",
                            config=apps.OVERRIDES, bn_statistics=False)
    _, _, out = run(off, arrays, app=apps.bn_train)
    assert out.content["metrics"]["gradleak-bn-statistics"] == 0
    assert observed[0].bn_statistics is None


def test_the_guard_fallback_keeps_or_drops_buffers_as_told(leaked_flags):
    leaked_flags(lambda s: [True] * len(s.per_sample["psnr"]))  # always leaking
    bn_arrays = ArrayRecord(apps.make_bn_model().state_dict())
    for buffers, expect_granted in (("keep", 1), ("drop", 0)):
        mod = leakage_guard_mod(apps.make_bn_model, apps.data_fn, budget=5, on_leak="defend",
                                fallback=NOISE, buffers=buffers, config=apps.OVERRIDES)
        msg, ctx, out = run(mod, bn_arrays, app=apps.bn_train)
        # Every sample leaks: the fallback ran and the update was withheld, the reason saying
        # whether the defended reply still revealed the BN statistics.
        assert out.has_error() and "after the fallback" in out.error.reason
        final = out.error.reason.split("after the fallback defense: ")[1].split(" (undefended")[0]
        assert ("BN statistics" in final) == bool(expect_granted), (buffers, final)


def test_the_guard_decides_with_the_scores_leaked_flags_only(arrays, leaked_flags):
    # A reconstruction above both paper thresholds that the project's criterion does not count
    # as leaked (e.g. it does not beat an update-free baseline) is not a leak for the guard.
    leaked_flags(lambda s: [False] * len(s.per_sample["psnr"]))
    mod = leakage_guard_mod(apps.make_model, apps.data_fn, budget=BUDGET, on_leak="drop")
    _, _, out = run(mod, arrays)
    assert not out.has_error()
    m = out.content["metrics"]
    assert m["gradleak-psnr"] >= 18.0 and m["gradleak-lpips"] <= 0.1  # passes both thresholds
    assert m["gradleak-leak-rate"] == 0.0 and m["gradleak-leaked"] == 0
    # And the other way round: a poor reconstruction that the flags call leaked is withheld.
    leaked_flags(lambda s: [True] * len(s.per_sample["psnr"]))
    weak = leakage_guard_mod(apps.make_model, apps.data_fn, budget=1, on_leak="drop")
    _, _, out = run(weak, arrays)
    assert out.has_error() and "leak rate 1.00 (leaked)" in out.error.reason


def test_without_leaked_flags_the_leak_rate_is_unknown_and_the_update_not_cleared(
        arrays, leaked_flags, caplog):
    leaked_flags(lambda s: None)  # what metrics.score gives without LPIPS weights
    mod = leakage_guard_mod(apps.make_model, apps.data_fn, budget=1, on_leak="report")
    with caplog.at_level(logging.WARNING, logger="flwr"):
        _, _, out = run(mod, arrays)
    m = out.content["metrics"]
    assert "gradleak-leak-rate" not in m and "gradleak-leak-rate-initial" not in m
    assert m["gradleak-leaked"] == 1  # the guard cannot clear what it cannot measure
    assert any("no leak rate" in r.getMessage() for r in caplog.records)
    drop = leakage_guard_mod(apps.make_model, apps.data_fn, budget=1, on_leak="drop")
    _, _, out = run(drop, arrays)
    assert out.has_error() and "leak rate n/a" in out.error.reason
