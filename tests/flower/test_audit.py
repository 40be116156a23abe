"""LeakageAuditStrategy: aggregation unchanged, reconstructions stored, quality = `gradleak attack`."""

from __future__ import annotations

import json
import sqlite3

import pytest

pytest.importorskip("flwr")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord  # noqa: E402
from flwr.serverapp.strategy import FedAdam, FedAvg  # noqa: E402

from gradleak.cli import main  # noqa: E402
from gradleak.errors import GradleakError  # noqa: E402
from gradleak.fl.client import capture_bn_statistics  # noqa: E402
from gradleak.flower import LeakageAuditStrategy  # noqa: E402
from gradleak.flower.arrays import to_tensors  # noqa: E402
from gradleak.scenario import Scenario  # noqa: E402
from tests.flower import apps  # noqa: E402

ITERATIONS = 150
NODES, StubGrid = apps.NODES, apps.StubGrid
pytestmark = pytest.mark.usefixtures("server_identity")


def truth(server_round, reply):
    return apps.client_data(int(reply.content["metrics"]["partition-id"]))


def one_round(strategy, arrays, server_round=1, app=apps.train):
    messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), StubGrid()))
    replies = []
    for msg in messages:
        node = msg.metadata.dst_node_id
        replies.append(app(msg, apps.context(node, NODES[node])))
    return replies


def audit(tmp_path, **kwargs):
    kwargs.setdefault("config", ["threat.knows_labels=true", "attack.labels=known"] + apps.OVERRIDES)
    kwargs.setdefault("budget", ITERATIONS)
    return LeakageAuditStrategy(FedAvg(fraction_evaluate=0.0), model_fn=apps.make_model,
                                input_shape=(3, apps.RES, apps.RES), attack="ig",
                                out=str(tmp_path / "audit"), **kwargs)


def test_audit_matches_gradleak_attack_and_leaves_aggregation_unchanged(tmp_path):
    arrays = ArrayRecord(apps.make_model().state_dict())
    # The same model and victim sample as `gradleak attack` with these settings.
    cfg = apps.base_config([f"attack.iterations={ITERATIONS}"])
    sc = Scenario.from_config(cfg)
    for k, v in sc.model.state_dict().items():
        assert torch.equal(v, apps.make_model().state_dict()[k])
    assert torch.equal(sc.images, apps.client_data(0)[0])
    assert main(["attack", "--out", str(tmp_path / "cli"), "--quiet", *apps.OVERRIDES,
                 f"attack.iterations={ITERATIONS}"]) == 0
    cli_psnr = json.loads((tmp_path / "cli" / "result.json").read_text())["metrics"]["psnr"]

    strategy = audit(tmp_path, ground_truth=truth, clients=[101])
    replies = one_round(strategy, arrays)
    wrapped = strategy.aggregate_train(1, replies)
    plain = FedAvg(fraction_evaluate=0.0).aggregate_train(1, replies)
    for k in plain[0]:
        assert np.array_equal(wrapped[0][k].numpy(), plain[0][k].numpy())
    ours = {k: v for k, v in dict(wrapped[1]).items() if not k.startswith("gradleak-")}
    assert ours == dict(plain[1])  # the strategy's metrics as they were, plus the audit's summary
    assert wrapped[1]["gradleak-audited"] == 1 and wrapped[1]["gradleak-leak-rate"] == 1.0

    (record,) = strategy.records
    assert record["client"] == "node101" and record["num_samples"] == 1
    assert cli_psnr > 25.0  # the undefended single-sample FedSGD client leaks
    print(f"audit psnr {record['psnr']:.3f} dB, gradleak attack psnr {cli_psnr:.3f} dB")
    assert abs(record["psnr"] - cli_psnr) < 1.0, (record["psnr"], cli_psnr)
    assert record["brr"] == 1.0 and record["label_accuracy"] == 1.0

    db = sqlite3.connect(tmp_path / "audit" / "results.sqlite")
    rows = db.execute("SELECT status, round, client, psnr, attack_loss, image FROM runs").fetchall()
    assert rows == [("ok", 1, "node101", record["psnr"], record["attack_loss"], rows[0][5])]
    assert (tmp_path / "audit" / rows[0][5]).is_file()


def test_without_ground_truth_it_reports_what_a_real_server_has(tmp_path):
    arrays = ArrayRecord(apps.make_model().state_dict())
    strategy = audit(tmp_path, budget=20, config=apps.OVERRIDES, clients=1, every=2)
    strategy.aggregate_train(1, one_round(strategy, arrays))
    strategy.aggregate_train(2, one_round(strategy, arrays, server_round=2))  # not audited
    (record,) = strategy.records
    assert record["round"] == 1 and record["client"] == "node101"
    assert "psnr" not in record and record["label_source"] == "llg"
    assert np.isfinite(record["attack_loss"]) and len(record["labels_inferred"]) == 1
    assert len(list((tmp_path / "audit").glob("*/round_0001/node101.png"))) == 1


def test_secure_aggregation_audits_only_the_aggregate(tmp_path):
    arrays = ArrayRecord(apps.make_model().state_dict())
    strategy = audit(tmp_path, budget=20, ground_truth=truth, secure_aggregation=True)
    strategy.aggregate_train(1, one_round(strategy, arrays))
    (record,) = strategy.records
    assert record["client"] == "aggregate" and record["num_samples"] == 2
    assert "aggregate of 2 clients" in record["sees"]


def test_a_failing_audit_is_stored_and_training_goes_on(tmp_path):
    arrays = ArrayRecord(apps.make_model().state_dict())

    def wrong_truth(server_round, reply):
        return apps.client_data(0, num_samples=2)  # 2 samples for a 1-sample update

    strategy = audit(tmp_path, budget=5, ground_truth=wrong_truth, clients=[101])
    aggregated, _ = strategy.aggregate_train(1, one_round(strategy, arrays))
    assert aggregated is not None
    (record,) = strategy.records
    assert "2 samples" in record["error"]


def test_labels_need_a_ground_truth_and_bad_settings_fail_up_front(tmp_path):
    with pytest.raises(GradleakError, match="knows_labels"):
        audit(tmp_path, ground_truth=None)
    with pytest.raises(GradleakError, match="every"):
        audit(tmp_path, ground_truth=truth, every=0)
    with pytest.raises(GradleakError, match="input_shape"):
        LeakageAuditStrategy(FedAvg(), model_fn=apps.make_model, input_shape=(16, 16))


class Tripled(FedAvg):
    """A strategy whose output is not the weighted mean of the updates (3 x FedAvg's arrays)."""

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        return ArrayRecord({k: Array(3 * v.numpy()) for k, v in arrays.items()}), metrics


@pytest.mark.parametrize("wrapped", [
    lambda: Tripled(fraction_evaluate=0.0, weighted_by_key="weight"),
    lambda: FedAdam(fraction_evaluate=0.0, weighted_by_key="weight", eta=0.5),
])
def test_secure_aggregation_attacks_the_weighted_mean_of_the_updates(tmp_path, observed, wrapped):
    arrays = ArrayRecord(apps.make_model().state_dict())
    strategy = LeakageAuditStrategy(wrapped(), model_fn=apps.make_model, out=str(tmp_path / "a"),
                                    input_shape=(3, apps.RES, apps.RES), budget=1,
                                    config=apps.OVERRIDES, secure_aggregation=True)
    assert strategy.weighted_by_key == "weight"  # as the wrapped strategy is configured
    replies = one_round(strategy, arrays)
    weights = [1, 3]
    for reply, w in zip(replies, weights, strict=True):
        reply.content["metrics"]["weight"] = w
    aggregated, _ = strategy.aggregate_train(1, replies)
    (obs,) = observed
    assert obs.update.num_samples == sum(weights)
    before = to_tensors(arrays)
    updates = [{k: t - before[k] for k, t in to_tensors(r.content["arrays"]).items()}
               for r in replies]
    out = to_tensors(aggregated)
    for k, got in obs.update.tensors.items():
        mean = (weights[0] * updates[0][k] + weights[1] * updates[1][k]) / sum(weights)
        assert torch.allclose(got, mean, atol=1e-7), k
        # The strategy's own output is another update: the audit did not attack that.
        assert not torch.allclose(out[k].float() - before[k], mean, atol=1e-4), k
    (record,) = strategy.records
    assert record["client"] == "aggregate" and record["num_samples"] == 4


def test_the_audit_grants_the_bn_statistics_of_a_reply(tmp_path, observed):
    arrays = ArrayRecord(apps.make_bn_model().state_dict())
    strategy = LeakageAuditStrategy(FedAvg(fraction_evaluate=0.0), model_fn=apps.make_bn_model,
                                    input_shape=(3, apps.RES, apps.RES), budget=2,
                                    out=str(tmp_path / "a"), config=apps.OVERRIDES, clients=[101])
    replies = one_round(strategy, arrays, app=apps.bn_train)
    strategy.aggregate_train(1, replies)
    (record,) = strategy.records
    assert record["bn_statistics_granted"] and record["bn_prior"] == 0.1
    assert "exact batch statistics" in record["bn_statistics"]
    (obs,) = observed
    real = capture_bn_statistics(apps.make_bn_model().train(), apps.client_data(NODES[101])[0])
    for (mu, var), (mu_t, var_t) in zip(obs.bn_statistics, real, strict=True):
        assert torch.allclose(mu, mu_t, atol=1e-5) and torch.allclose(var, var_t, atol=1e-5)

    # Under secure aggregation the mean statistic is that of all clients' samples together.
    observed.clear()
    secure = LeakageAuditStrategy(FedAvg(fraction_evaluate=0.0), model_fn=apps.make_bn_model,
                                  input_shape=(3, apps.RES, apps.RES), budget=2,
                                  out=str(tmp_path / "b"), config=apps.OVERRIDES,
                                  secure_aggregation=True)
    secure.aggregate_train(1, one_round(secure, arrays, app=apps.bn_train))
    both = torch.cat([apps.client_data(p)[0] for p in NODES.values()])
    pooled = capture_bn_statistics(apps.make_bn_model().train(), both)
    assert torch.allclose(observed[0].bn_statistics[0][0], pooled[0][0], atol=1e-5)


def test_the_audit_leak_rate_is_the_share_of_leaked_flags(tmp_path, leaked_flags):
    leaked_flags(lambda s: [True] * len(s.per_sample["psnr"]))
    arrays = ArrayRecord(apps.make_model().state_dict())
    strategy = audit(tmp_path, budget=2, ground_truth=truth, clients=[101])
    strategy.aggregate_train(1, one_round(strategy, arrays))
    (record,) = strategy.records
    assert record["psnr"] < 18.0  # 2 iterations reconstruct nothing by the thresholds ...
    assert record["leak_rate"] == 1.0 and record["leak_criterion"] == "leaked"  # ... flags decide
