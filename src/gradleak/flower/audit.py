"""The server-side audit: a wrapper around any Flower strategy that attacks client updates.

``LeakageAuditStrategy(FedAvg(...), model_fn=Net, input_shape=(3, 32, 32), attack="ig")`` behaves
exactly like the wrapped strategy (it only reads the replies, then delegates aggregation
unchanged) and, in audited rounds, reconstructs the chosen clients' data from their updates
(reply arrays minus the global arrays it sent) with the knowledge the configured threat model
grants, plus the BN batch statistics the reply's buffers reveal (the server holds them: level 4,
:mod:`gradleak.flower.bn`). Leak rates are the share of samples the Score flags as leaked (the
project's one criterion, ``gradleak.metrics``). Reconstructions, final gradient losses and, with a
simulation's ``ground_truth`` hook, the scores are written to ``<out>/results.sqlite`` and
``<out>/<run>/round_RRRR/*.png``.

Under secure aggregation (``secure_aggregation=True``) the server sees only the aggregate: the
audit then attacks the weighted mean of the clients' updates (``sum_k n_k u_k / sum_k n_k`` with
N = ``sum_k n_k`` samples, ``n_k`` the reply's ``weighted_by_key``), computed here from the replies
and the global arrays: the wrapped strategy's output is not that mean for FedAdam, FedAvgM, the DP
wrappers or Krum, while secure aggregation reveals exactly the sum. Never an individual reply.
Flower 1.41 runs SecAgg+ only through its legacy ``SecAggPlusWorkflow``; declare it here when your
deployment secures aggregation.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from gradleak.errors import GradleakError
from gradleak.flower.arrays import array_update, num_examples, to_record, to_tensors, weighted_mean
from gradleak.flower.leakage import (
    ConfigSpec,
    GlobalModel,
    Measurement,
    attack_update,
    configured_keys,
    probe_config,
    with_bn_statistics,
)
from gradleak.flower.outputs import AuditWriter
from gradleak.flower.text import sentences, text_model_of, text_shape

GroundTruth = Callable[[int, Message], tuple[torch.Tensor, torch.Tensor] | None]
ClientFilter = int | Collection[int] | Callable[[Message], bool] | None
AUDIT_DEFAULTS = {"threat": {"knows_labels": False}, "attack": {"labels": "llg"}}
GUARD_PREFIX = "gradleak-"


def strategy_weight_key(strategy: Strategy) -> str:
    """The metric a strategy weights replies by (``weighted_by_key``; wrappers such as the DP
    strategies hold it on the strategy they wrap), ``num-examples`` when it has none."""
    seen: set[int] = set()
    while strategy is not None and id(strategy) not in seen:
        seen.add(id(strategy))
        key = getattr(strategy, "weighted_by_key", None)
        if isinstance(key, str):
            return key
        strategy = getattr(strategy, "strategy", None)
    return "num-examples"


def headline(score: Any) -> str:
    """The score's one-number summary for a log line: PSNR for images, ROUGE-1 for text."""
    if hasattr(score, "psnr"):
        return f"psnr {score.psnr:.2f} dB"
    rouge = score.values.get("rouge1")
    return "rouge-1 n/a" if rouge is None else f"rouge-1 {rouge:.2f}"


def round_metrics(records: Sequence[dict[str, Any]]) -> dict[str, float | int]:
    """A round's audit as Flower metrics: ``gradleak-audited`` (updates attacked),
    ``gradleak-failed``, ``gradleak-attack-loss`` (mean final gradient loss), and with a ground
    truth ``gradleak-leak-rate`` (mean share of samples leaked), ``gradleak-leaked-updates``
    (updates with a leaked sample), ``gradleak-psnr`` or ``gradleak-rouge1`` (means) and
    ``gradleak-best-psnr``/``gradleak-best-rouge1``/``gradleak-best-lpips`` (the round's most
    leaking update). Empty when nothing was audited."""
    if not records:
        return {}
    ok = [r for r in records if "error" not in r]
    out: dict[str, float | int] = {"gradleak-audited": len(ok),
                                   "gradleak-failed": len(records) - len(ok)}
    losses = [r["attack_loss"] for r in ok if isinstance(r.get("attack_loss"), float)]
    if losses:
        out["gradleak-attack-loss"] = sum(losses) / len(losses)
    rates = [r["leak_rate"] for r in ok if r.get("leak_rate") is not None]
    if rates:
        out["gradleak-leak-rate"] = sum(rates) / len(rates)
        out["gradleak-leaked-updates"] = sum(1 for v in rates if v > 0)
    for key in ("psnr", "rouge1"):
        values = [r[key] for r in ok if isinstance(r.get(key), (int, float))]
        if values:
            out[f"gradleak-{key}"] = float(sum(values) / len(values))
            out[f"gradleak-best-{key}"] = float(max(values))
    lpips = [r["lpips"] for r in ok if isinstance(r.get("lpips"), (int, float))]
    if lpips:
        out["gradleak-best-lpips"] = float(min(lpips))
    return out


class LeakageAuditStrategy(Strategy):
    """Audit the updates of chosen clients every ``every`` rounds (rounds 1, 1 + every, ...).

    ``model_fn()`` builds the global model (state_dict keys = ArrayRecord keys), taking inputs of
    ``input_shape`` ``(C, H, W)`` in [0, 1], or normalised ones with ``mean``/``std`` given.
    ``clients``: ``None`` (all), an int k (the k lowest node ids), node ids, or a predicate on the
    reply. ``config``: gradleak overrides (``threat.*``, ``client.*`` = how the clients train,
    ``attack.*``); by default the server knows no labels and infers them (``attack.labels=llg``).
    ``ground_truth(server_round, reply)`` (simulation only) returns a client's ``(images,
    labels)`` to score against; without it the audit reports what a real server has: the
    reconstruction and its final gradient loss. ``weighted_by_key``: the metric holding a
    client's sample count N (default: the wrapped strategy's ``weighted_by_key``).
    ``bn_statistics``: grant the attack the BN batch statistics a reply's buffers reveal (the
    server holds them); ``False`` ignores them.
    """

    def __init__(self, strategy: Strategy, *, model_fn: Callable[[], nn.Module],
                 input_shape: Sequence[int] | None = None, attack: str = "ig",
                 budget: int | None = None, every: int = 1, clients: ClientFilter = None,
                 out: str = "gradleak-flower-audit", config: ConfigSpec = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 ground_truth: GroundTruth | None = None, secure_aggregation: bool = False,
                 weighted_by_key: str | None = None, bn_statistics: bool = True,
                 reference_texts: Sequence[str] | None = None) -> None:
        super().__init__()
        if not isinstance(every, int) or every < 1:
            raise GradleakError(f"bad value {every!r} for every: an integer >= 1 (audit every k-th round)")
        if isinstance(clients, int) and (isinstance(clients, bool) or clients < 1):
            raise GradleakError(f"bad value {clients!r} for clients: an int >= 1, node ids, a "
                                "predicate or None")
        self.cfg = probe_config(attack, budget, config, base=AUDIT_DEFAULTS)
        self.text = text_model_of(model_fn)
        if self.text is not None:  # token batches (2, L); no BN in a transformer
            self.input_shape: tuple[int, ...] = text_shape(self.text, self.cfg, input_shape)
            bn_statistics = False
        elif input_shape is None or len(input_shape) != 3:
            shown = None if input_shape is None else tuple(input_shape)
            raise GradleakError(f"bad value {shown!r} for input_shape: (C, H, W) of the model's "
                                "images")
        else:
            self.input_shape = tuple(input_shape)
        self.reference_texts = list(reference_texts or [])
        self.strategy, self.model_fn = strategy, model_fn
        self.every, self.clients, self.ground_truth = every, clients, ground_truth
        self.mean, self.std, self.secure_aggregation = mean, std, secure_aggregation
        self.weighted_by_key = weighted_by_key or strategy_weight_key(strategy)
        self.bn_cfg = (with_bn_statistics(self.cfg, explicit_weight="attack.bn" in
                                          configured_keys(config)) if bn_statistics else None)
        if self.cfg.threat.knows_labels and ground_truth is None:
            raise GradleakError("threat.knows_labels=true needs ground_truth= (a real server does not "
                                "see client labels); keep it false and infer them (attack.labels=llg)")
        self.writer = AuditWriter(out, self.cfg)
        self.records: list[dict[str, Any]] = []  # one summary per audited update, in order
        self.verdict: dict[str, Any] | None = None  # the run's verdict, once training ended
        self._global: dict[int, ArrayRecord] = {}

    def __repr__(self) -> str:
        return f"LeakageAuditStrategy({self.strategy!r})"

    def summary(self) -> None:
        sees = "the aggregate only (secure aggregation)" if self.secure_aggregation else "each update"
        log(INFO, "\t├──> gradleak audit: attack %s, %d iterations, every %d round(s), sees %s",
            self.cfg.attack.name, self.cfg.attack.iterations, self.every, sees)
        log(INFO, "\t│\t└── results in %s", self.writer.out)
        self.strategy.summary()

    def start(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped strategy's training (Flower's ``Strategy.start``), then the run's verdict
        and report in ``out`` (:mod:`gradleak.flower.summary`: ``verdict.json``, ``report.md``,
        ``index.html``); the verdict is also in :attr:`verdict`."""
        result = super().start(*args, **kwargs)
        self.finish()
        return result

    def finish(self) -> dict[str, Any]:
        """Write the verdict and report of the updates audited so far (``start`` calls it)."""
        from gradleak.flower.summary import write_report

        self.verdict = write_report(self.writer.out, self.records, self.cfg.to_dict())
        log(INFO, "gradleak audit: %s (%s); report %s", self.verdict["verdict"],
            self.verdict["claim"], self.writer.out / "index.html")
        return self.verdict

    def due(self, server_round: int) -> bool:
        return (server_round - 1) % self.every == 0

    # --- delegation ----------------------------------------------------------------------------

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        if self.due(server_round):  # a copy: the update of a reply is measured against it
            self._global = {server_round: to_record(to_tensors(arrays))}
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The wrapped strategy's aggregate; its metrics gain the round's audit summary
        (:func:`round_metrics`, ``gradleak-*`` keys) where Flower's history and dashboards look."""
        replies = list(replies)
        self._log_guard_reports(server_round, replies)
        before = len(self.records)
        if self.due(server_round) and server_round in self._global:
            if self.secure_aggregation:
                self._audit_aggregate(server_round, replies)
            else:
                for reply in self._selected(replies):
                    self._audit_reply(server_round, reply)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        summary = round_metrics(self.records[before:])
        if summary:
            metrics = MetricRecord({**(dict(metrics) if metrics is not None else {}), **summary})
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    # --- auditing ------------------------------------------------------------------------------

    def _selected(self, replies: list[Message]) -> list[Message]:
        ok = [r for r in replies if r.has_content() and len(r.content.array_records) == 1]
        if self.clients is None:
            return ok
        if isinstance(self.clients, int):
            return sorted(ok, key=lambda r: r.metadata.src_node_id)[: self.clients]
        if callable(self.clients):
            return [r for r in ok if self.clients(r)]
        ids = set(self.clients)
        return [r for r in ok if r.metadata.src_node_id in ids]

    def _num_samples(self, reply: Message) -> int:
        n = num_examples(reply, self.weighted_by_key)
        if n is None or n < 1:
            raise GradleakError(f"the reply declares no sample count {self.weighted_by_key!r} >= 1")
        return n

    def _audit_reply(self, server_round: int, reply: Message) -> None:
        who = f"node{reply.metadata.src_node_id}"
        outgoing = next(iter(reply.content.array_records.values()))

        def run() -> tuple[Measurement, Any]:
            n = self._num_samples(reply)
            truth = self.ground_truth(server_round, reply) if self.ground_truth else None
            return self._measure(server_round, outgoing, n, truth), truth

        self._guarded(server_round, who, run, sees="one client's update")

    def aggregate_update(self, server_round: int, replies: list[Message]) -> tuple[ArrayRecord, int]:
        """What secure aggregation reveals of the round's replies: the global arrays plus the
        ``weighted_by_key``-weighted mean of the clients' updates, and N = the summed weights;
        independent of what the wrapped strategy makes of them."""
        ok = [r for r in replies if r.has_content() and len(r.content.array_records) == 1]
        weights = [self._num_samples(r) for r in ok]
        outgoing = [next(iter(r.content.array_records.values())) for r in ok]
        return weighted_mean(self._global[server_round], outgoing, weights), sum(weights)

    def _audit_aggregate(self, server_round: int, replies: list[Message]) -> None:
        ok = [r for r in replies if r.has_content() and len(r.content.array_records) == 1]

        def run() -> tuple[Measurement, Any]:
            arrays, n = self.aggregate_update(server_round, ok)
            truth = None
            if self.ground_truth is not None:
                parts = [self.ground_truth(server_round, r) for r in ok]
                if all(p is not None for p in parts):
                    truth = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
            return self._measure(server_round, arrays, n, truth), truth

        self._guarded(server_round, "aggregate", run,
                      sees=f"the aggregate of {len(ok)} clients (secure aggregation)")

    def _measure(self, server_round: int, outgoing: ArrayRecord, n: int, truth: Any) -> Measurement:
        incoming = self._global[server_round]
        model = GlobalModel.load(self.model_fn, incoming, mean=self.mean, std=self.std)
        update = array_update(incoming, outgoing, num_samples=n)
        bn = (model.bn_statistics(self.cfg, incoming, outgoing, num_samples=n,
                                  input_shape=self.input_shape) if self.bn_cfg else None)
        return attack_update(self.cfg, model, update, input_shape=self.input_shape, truth=truth,
                             bn=bn, bn_cfg=self.bn_cfg, reference=self.reference_texts)

    def _guarded(self, server_round: int, who: str, run: Callable[[], tuple[Measurement, Any]], *,
                 sees: str) -> None:
        """Run one audit; a failure is logged and stored, never allowed to stop the training."""
        try:
            m, truth = run()
        except Exception as exc:  # the FL run must go on; the failure is on record
            log(WARNING, "gradleak audit of %s in round %d failed: %s", who, server_round, exc)
            result = {"round": server_round, "client": who, "sees": sees, "error": str(exc)}
            self.writer.put(server_round=server_round, who=who, result=result, status="failed",
                            error=f"{type(exc).__name__}: {exc}")
            self.records.append(result)
            return
        result = self._result(server_round, who, m, sees=sees)
        recon = m.score.matched if m.score else m.recon.images
        original = None if truth is None else truth[0]
        if self.text is not None:  # sentences, not pictures
            result["file"] = self.writer.put(server_round=server_round, who=who, result=result,
                                             seconds=m.seconds,
                                             text=sentences(self.text, recon, original))
        else:
            result["file"] = self.writer.put(server_round=server_round, who=who, result=result,
                                             seconds=m.seconds, recon=recon, truth=original)
        self.records.append(result)
        scored = "" if m.score is None else f", {headline(m.score)}, leak rate {m.leak_rate}"
        log(INFO, "gradleak audit round %d %s: %s, attack loss %.4g%s", server_round, who, sees,
            m.loss, scored)

    def _result(self, server_round: int, who: str, m: Measurement, *, sees: str) -> dict[str, Any]:
        recon = m.recon
        out: dict[str, Any] = {
            "round": server_round, "client": who, "sees": sees,
            "num_samples": int(recon.images.shape[0]), "attack": self.cfg.attack.name,
            "iterations": recon.iterations, "attack_loss": m.loss, "attack_losses": recon.losses,
            "labels_inferred": recon.labels, "label_source": recon.label_source,
            "secure_aggregation": self.secure_aggregation, "config": self.cfg.to_dict(),
            "bn_statistics": None if m.bn is None else m.bn.note,
            "bn_statistics_granted": m.bn is not None and m.bn.granted, "bn_prior": m.bn_prior,
        }
        if m.score is not None:
            s = m.score
            out.update(s.metrics(), leak_rate=m.leak_rate, leak_criterion=m.criterion,
                       per_sample=s.per_sample, thresholds=s.thresholds, warnings=s.warnings)
        return out

    def _log_guard_reports(self, server_round: int, replies: list[Message]) -> None:
        """Record what clients' leakage guards reported (numbers only, never data)."""
        for reply in replies:
            who = f"node{reply.metadata.src_node_id}-guard"
            if reply.has_error():
                if reply.error.reason and reply.error.reason.startswith("gradleak leakage guard"):
                    result = {"round": server_round, "client": who, "withheld": True,
                              "reason": reply.error.reason}
                    self.writer.put(server_round=server_round, who=who, result=result,
                                    status="withheld", error=reply.error.reason, kind="flower-guard")
                continue
            numbers = {k: v for rec in reply.content.metric_records.values() for k, v in rec.items()
                       if k.startswith(GUARD_PREFIX)}
            if numbers:
                result = {"round": server_round, "client": who, "withheld": False,
                          "guard": numbers}
                self.writer.put(server_round=server_round, who=who, result=result,
                                kind="flower-guard", columns=numbers)
