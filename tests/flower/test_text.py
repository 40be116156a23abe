"""The Flower audit on a text model (issue 27): a LoRA GPT-2's adapter update, attacked by DAGER
with what a server has, the sentences stored, the round's summary in Flower's metrics."""

from __future__ import annotations

import functools
import sqlite3

import pytest

pytest.importorskip("flwr")
pytest.importorskip("peft")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from gradleak.config import load_config  # noqa: E402
from gradleak.data import build_dataset  # noqa: E402
from gradleak.errors import GradleakError  # noqa: E402
from gradleak.flower import LeakageAuditStrategy  # noqa: E402
from gradleak.flower.audit import round_metrics  # noqa: E402
from gradleak.flower.text import load_arrays  # noqa: E402
from gradleak.models.hf import build_text_model  # noqa: E402
from gradleak.models.text import IGNORE_INDEX  # noqa: E402
from tests.flower import apps  # noqa: E402

L = 12
MODEL = ["model.name=gpt2-tiny", "model.hidden_size=64", "model.layers=2", "model.heads=2",
         "model.lora_rank=16"]
NODES, StubGrid = apps.NODES, apps.StubGrid
pytestmark = pytest.mark.usefixtures("server_identity")


@functools.cache
def _base():
    return build_text_model(load_config(None, MODEL).model, num_classes=1, seed=0)


def model_fn():
    import copy

    return copy.deepcopy(_base())


def adapters(net) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}


@functools.cache
def sentences():
    data = build_dataset(load_config(None, ["data.dataset=personal", "data.split=train"]).data)
    return data.tokenized(_base().tokenizer, L)


def batch_of(partition: int) -> torch.Tensor:
    return sentences().tensors([partition])[0]


def train(msg: Message, ctx: Context) -> Message:
    """One SGD step of next-token prediction on one sentence; the reply holds the adapters only."""
    net = model_fn()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict(), strict=False)
    x = batch_of(int(ctx.node_config["partition-id"]))
    F.cross_entropy(net(x), net.targets(x, None), ignore_index=IGNORE_INDEX).backward()
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p -= 0.05 * p.grad
    metrics = MetricRecord({"num-examples": 1, "partition-id": int(ctx.node_config["partition-id"])})
    return Message(RecordDict({"arrays": ArrayRecord(adapters(net)), "metrics": metrics}),
                   reply_to=msg)


def truth(server_round, reply):
    return batch_of(int(reply.content["metrics"]["partition-id"])), torch.zeros(1, dtype=torch.long)


def audited_round(tmp_path, **kwargs):
    strategy = LeakageAuditStrategy(FedAvg(fraction_evaluate=0.0), model_fn=model_fn,
                                    attack="dager", out=str(tmp_path / "audit"),
                                    config=[f"data.max_length={L}"], **kwargs)
    arrays = ArrayRecord(adapters(model_fn()))
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), StubGrid()))
    replies = [train(m, apps.context(m.metadata.dst_node_id, NODES[m.metadata.dst_node_id]))
               for m in messages]
    return strategy, strategy.aggregate_train(1, replies)


def test_dager_recovers_each_clients_sentence_from_its_adapter_update(tmp_path):
    public = list(sentences().texts[50:80])
    strategy, (arrays, metrics) = audited_round(tmp_path, ground_truth=truth,
                                                reference_texts=public)
    assert set(arrays.keys()) == set(adapters(model_fn()))  # only adapters travel
    assert len(strategy.records) == 2
    for r in strategy.records:
        assert r["rouge1"] == 1.0 and r["leak_rate"] == 1.0
        assert r["per_sample"]["reconstruction"] == r["per_sample"]["original"]
    assert metrics["gradleak-audited"] == 2 and metrics["gradleak-leaked-updates"] == 2
    assert metrics["gradleak-leak-rate"] == 1.0 and metrics["gradleak-rouge1"] == 1.0
    with sqlite3.connect(tmp_path / "audit" / "results.sqlite") as db:
        files = [f for (f,) in db.execute("SELECT text_file FROM runs")]
    texts = [(tmp_path / "audit" / f).read_text() for f in files]
    assert all("original:" in t and "reconstruction:" in t for t in texts)
    sent = {sentences().tokenizer.decode(batch_of(p)[0]) for p in NODES.values()}
    assert {t.splitlines()[1].split(": ", 1)[1].strip() for t in texts} == sent
    # The run's verdict and report where `gradleak report` finds them.
    verdict = strategy.finish()
    assert verdict["verdict"] == "leaks" and verdict["leaked"] == 2 and verdict["scored"] == 2
    from gradleak.cli import main

    (tmp_path / "audit" / "index.html").unlink()
    assert main(["report", str(tmp_path / "audit")]) == 0
    page = (tmp_path / "audit" / "index.html").read_text()
    assert "gradleak Flower audit: leaks" in page and "2 of 2 scored updates leaked" in page


def test_without_a_truth_the_server_still_reads_the_sentence(tmp_path):
    strategy, (_, metrics) = audited_round(tmp_path)
    sent = {sentences().tokenizer.decode(batch_of(p)[0]) for p in NODES.values()}
    with sqlite3.connect(tmp_path / "audit" / "results.sqlite") as db:
        files = [f for (f,) in db.execute("SELECT text_file FROM runs")]
    got = {(tmp_path / "audit" / f).read_text().split(": ", 1)[1].strip() for f in files}
    assert got == sent  # recovered from the update alone
    assert "gradleak-leak-rate" not in metrics and metrics["gradleak-audited"] == 2
    assert all("rouge1" not in r for r in strategy.records)
    assert strategy.finish()["verdict"] == "not scored"


def test_arrays_that_do_not_fit_the_text_model_are_one_line_errors():
    net = model_fn()
    state = adapters(net)
    load_arrays(net, ArrayRecord(state))  # the trainable subset loads
    first = next(iter(state))
    with pytest.raises(GradleakError, match="trainable parameter"):
        load_arrays(net, ArrayRecord({k: v for k, v in state.items() if k != first}))
    with pytest.raises(GradleakError, match="not one of its tensors"):
        load_arrays(net, ArrayRecord({**state, "extra.weight": torch.zeros(2)}))
    with pytest.raises(GradleakError, match="shape of"):
        load_arrays(net, ArrayRecord({**state, first: torch.zeros(3)}))


def test_bad_text_settings_fail_when_the_strategy_is_built(tmp_path):
    with pytest.raises(GradleakError, match=r"input_shape with a text model: \(2, L\)"):
        LeakageAuditStrategy(FedAvg(), model_fn=model_fn, input_shape=(3, 16, 16), attack="dager",
                             out=str(tmp_path))
    with pytest.raises(GradleakError, match="at most 128 positions"):
        LeakageAuditStrategy(FedAvg(), model_fn=model_fn, input_shape=(2, 500), attack="dager",
                             out=str(tmp_path))
    with pytest.raises(GradleakError, match=r"for input_shape: \(C, H, W\)"):
        LeakageAuditStrategy(FedAvg(), model_fn=apps.make_model, attack="ig", out=str(tmp_path))


def test_round_metrics_summarise_only_what_was_measured():
    assert round_metrics([]) == {}
    rows = [{"attack_loss": 0.5, "leak_rate": 1.0, "psnr": 30.0},
            {"attack_loss": 1.5, "leak_rate": 0.0, "psnr": 10.0}, {"error": "boom"}]
    assert round_metrics(rows) == {"gradleak-audited": 2, "gradleak-failed": 1,
                                   "gradleak-attack-loss": 1.0, "gradleak-leak-rate": 0.5,
                                   "gradleak-leaked-updates": 1, "gradleak-psnr": 20.0,
                                   "gradleak-best-psnr": 30.0}
    assert "gradleak-leak-rate" not in round_metrics([{"attack_loss": 0.1}])


def test_the_flower_verdict_claims_no_more_than_its_updates():
    from gradleak.flower.summary import flower_verdict, upper_bound

    assert flower_verdict([{"leak_rate": 0.0}] * 3 + [{"leak_rate": 0.5}])["verdict"] == "leaks"
    none = flower_verdict([{"leak_rate": 0.0}] * 10)
    assert none["verdict"] == "no leak found" and none["upper_bound"] == pytest.approx(
        1 - 0.05 ** (1 / 10))  # Clopper-Pearson after 0 of 10
    assert flower_verdict([{"attack_loss": 0.1}])["verdict"] == "not scored"
    assert flower_verdict([{"error": "x"}])["failed"] == 1
    assert upper_bound(3, 3) == 1.0
