"""Prometheus metrics of the operator. The names are a contract (Grafana dashboard and alerts).

Counters count what the durable record (the ladder's status) holds: on the first reconcile of a
ladder after a restart, every cell and decision already recorded is counted once, so the counter
value stays "GPU-seconds of finished cells of the ladders this operator watches" across restarts
(rate()/increase() see no reset when the value comes back unchanged).

Every counter series a ladder will use is exported at 0 as soon as the ladder (or the cell) is
seen: a series that first appears at 1 hides its first event from increase() and rate(), so a
dashboard or an alert would miss the first rejected result or the first decision.

Units are base units, as Prometheus' naming rules (and `promtool check metrics`) want:
GPU-seconds, not GPU-hours; the dashboard and the alerts divide by 3600.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from contextlib import suppress

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..core.accounting import cell_gpu_hours, cell_occupied_gpu_hours
from ..core.api import LadderSpec
from ..core.attempts import Attempts
from ..core.status import LadderStatus
from .scheduling import StartTimes

CELL_STATES = ("Pending", "Queued", "Running", "Succeeded", "Failed")
# ResultError/Rejection reasons (core/result.py, controller/intake.py), exported at 0 per ladder.
RESULT_ERROR_REASONS = ("malformed", "invalid", "identity", "metric", "foreign", "range", "forged")

# Decisions are meant to be fast (p99 < 2 s): fine buckets below a few seconds.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
# A cell's wait in a batch queue: seconds behind a short stage, hours behind a busy cluster.
_QUEUE_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)
# A cell's start: a second when the cluster has room, hours in a queue. Kubernetes' timestamps
# have one-second resolution, so nothing finer than a second means anything.
_START_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 4 * 3600.0, 12 * 3600.0)


class LadderMetrics:
    """All metrics, on their own registry (several operators can live in one test process)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self._gpu_metrics()
        self._cell_metrics()
        self._reconcile_metrics()
        self._cell_start_metrics()
        self._operator_metrics()
        self._ladder_metrics()
        self._lock = threading.Lock()
        self._counted_cells: dict[tuple[str, str], set] = defaultdict(set)
        self._counted_decisions: dict[tuple[str, str], set] = defaultdict(set)
        self._info_labels: dict[tuple[str, str], tuple] = {}
        self._tau_labels: dict[tuple[str, str], tuple] = {}
        self._stage_labels: dict[tuple[str, str], set] = defaultdict(set)
        self._queue_seen: dict[tuple[str, str], dict[tuple[str, str, str, int], float]] = defaultdict(dict)

    def _gpu_metrics(self) -> None:
        """GPU-seconds spent, held and saved; GPUs held now; time queued for quota."""
        self.gpu_seconds = Counter(
            "ladder_gpu_seconds",
            "GPU-seconds of finished cells (train seconds x GPUs).",
            ["namespace", "ladder", "stage", "candidate", "host_block"],
            registry=self.registry,
        )
        self.occupied_gpu_seconds = Counter(
            "ladder_occupied_gpu_seconds",
            "GPU-seconds finished cells held their GPUs (Pod bound to trainer exit, every attempt; "
            "unmeasured cells count their train seconds), x GPUs.",
            ["namespace", "ladder", "stage", "candidate", "host_block"],
            registry=self.registry,
        )
        self.gpus_in_use = Gauge(
            "ladder_gpus_in_use",
            "GPUs held by running cells now (queued cells hold none).",
            ["namespace", "ladder"],
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "ladder_cell_queue_seconds",
            "Seconds a cell waited in its batch queue (Kueue) before it ran, one observation per ended wait.",
            ["namespace", "ladder"],
            buckets=_QUEUE_BUCKETS,
            registry=self.registry,
        )
        self.counterfactual = Gauge(
            "ladder_counterfactual_gpu_seconds",
            "GPU-seconds had every candidate entering this stage run the final stage.",
            ["namespace", "ladder", "stage"],
            registry=self.registry,
        )

    def _cell_metrics(self) -> None:
        """Cells by state, decisions recorded, results rejected."""
        self.cells = Gauge(
            "ladder_cells", "Cells by state.", ["namespace", "ladder", "stage", "state"], registry=self.registry
        )
        self.decisions = Counter(
            "ladder_decisions", "Stage decisions recorded.", ["namespace", "ladder", "stage"], registry=self.registry
        )
        self.result_errors = Counter(
            "ladder_result_errors",
            "Results rejected, by reason.",
            ["namespace", "ladder", "reason"],
            registry=self.registry,
        )

    def _reconcile_metrics(self) -> None:
        """How long a reconcile, and a stage's decision, take."""
        self.reconcile_duration = Histogram(
            "ladder_reconcile_duration_seconds", "Time of one reconcile of a ladder.", registry=self.registry
        )
        self.decision_latency = Histogram(
            "ladder_decision_latency_seconds",
            "From a stage's last result seen to the next stage's Jobs created.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def _cell_start_metrics(self) -> None:
        """How long a cell takes to start, part by part."""
        # The wait a user feels, per cell (controller/scheduling.py start_times): the Job controller,
        # then the scheduler (and free capacity), then the kubelet.
        self.cell_pod_creation = Histogram(
            "ladder_cell_pod_creation_seconds",
            "From a cell's Job created to its first Pod created (the Job controller).",
            ["namespace"],
            buckets=_START_BUCKETS,
            registry=self.registry,
        )
        self.cell_scheduling = Histogram(
            "ladder_cell_scheduling_seconds",
            "From a cell's Job created to its first Pod scheduled on a node.",
            ["namespace"],
            buckets=_START_BUCKETS,
            registry=self.registry,
        )
        self.cell_start = Histogram(
            "ladder_cell_start_seconds",
            "From a cell's Pod scheduled to its trainer container running (image pull, volumes, container creation).",
            ["namespace"],
            buckets=_START_BUCKETS,
            registry=self.registry,
        )

    def _operator_metrics(self) -> None:
        """The operator's own health: failed reconciles, API requests."""
        self.reconcile_errors = Counter(
            "ladder_reconcile_errors", "Reconciles that failed (each is retried with backoff).", registry=self.registry
        )
        self.api_requests = Counter(
            "ladder_operator_api_requests",
            "API requests the reconciles made (watches not counted).",
            ["operation"],
            registry=self.registry,
        )

    def _ladder_metrics(self) -> None:
        """Per ladder: its ranking's stability and its phase."""
        # Only the latest stage pair with a defined tau, one series per ladder: the question a dashboard
        # asks is "how stable is this ladder's ranking now"; every pair is in status.stability.stages.
        self.rank_stability = Gauge(
            "ladder_rank_stability_kendall_tau",
            "Kendall tau-b between the aggregates of the latest two decided stages "
            "(1 same order, 0 unrelated, -1 reversed); only the latest pair with a defined tau.",
            ["namespace", "ladder", "from_stage", "to_stage"],
            registry=self.registry,
        )
        self.info = Gauge(
            "ladder_info",
            "1 per ladder, with its phase, current stage and leader.",
            ["namespace", "ladder", "phase", "stage", "leader"],
            registry=self.registry,
        )

    def observe(self, namespace: str, ladder: str, spec: LadderSpec, status: LadderStatus) -> None:
        """Bring every per-ladder metric in line with a freshly built status."""
        key = (namespace, ladder)
        gpus = spec.trainer.cell_gpus  # nodes x gpus
        budgets = {s.name: s.budget_seconds for s in spec.stages}
        with self._lock:
            if key not in self._counted_cells:
                for reason in RESULT_ERROR_REASONS:
                    self.result_errors.labels(namespace, ladder, reason)
                self.queue_seconds.labels(namespace, ladder)  # at 0 too: a ladder that never queues shows 0
            counted = self._counted_cells[key]
            running = 0
            for st in status.stages:
                by_state = dict.fromkeys(CELL_STATES, 0)
                for c in st.cells:
                    by_state[c.state] += 1
                    if c.state == "Running":
                        running += 1
                    cell_key = (st.name, c.candidate, c.host_block, c.seed)
                    self._observe_wait(key, cell_key, c.attempts)
                    labels = (namespace, ladder, st.name, c.candidate, c.host_block)
                    spent, occupied = self.gpu_seconds.labels(*labels), self.occupied_gpu_seconds.labels(*labels)
                    if c.state in ("Succeeded", "Failed") and cell_key not in counted:
                        counted.add(cell_key)
                        budget = budgets.get(st.name, 0.0)
                        cell_gpus = c.gpus if c.gpus is not None else gpus
                        # The status's own accounting, in GPU-seconds, so counters and status agree.
                        spent.inc(3600.0 * cell_gpu_hours(c.train_seconds, budget, cell_gpus, c.resumed_seconds))
                        occupied.inc(
                            3600.0
                            * cell_occupied_gpu_hours(
                                c.occupied_seconds, c.train_seconds, budget, cell_gpus, c.resumed_seconds
                            )
                        )
                for state, n in by_state.items():
                    self.cells.labels(namespace, ladder, st.name, state).set(n)
                self._stage_labels[key].add(st.name)
                decided = self.decisions.labels(namespace, ladder, st.name)
                if st.decision is not None and st.name not in self._counted_decisions[key]:
                    self._counted_decisions[key].add(st.name)
                    decided.inc()
            self.gpus_in_use.labels(namespace, ladder).set(running * gpus)
            if status.gpu_hours is not None:
                for cf in status.gpu_hours.counterfactuals:
                    self.counterfactual.labels(namespace, ladder, cf.stage).set(cf.gpu_hours * 3600.0)
            self._set_rank_stability(key, status)
        self.set_info(namespace, ladder, status.phase, status.current_stage or "", status.leader or "")

    def _observe_wait(self, key: tuple[str, str], cell_key: tuple[str, str, str, int], a: Attempts | None) -> None:
        """One observation per wait the status records as ended (the recorded sum grew). Like the
        counters, a restarted operator observes the recorded waits once again."""
        waited = a.queued_seconds if a is not None else None
        seen = self._queue_seen[key]
        if waited is not None and waited > seen.get(cell_key, 0.0):
            self.queue_seconds.labels(*key).observe(waited - seen.get(cell_key, 0.0))
            seen[cell_key] = waited

    def _set_rank_stability(self, key: tuple[str, str], status: LadderStatus) -> None:
        stages = status.stability.stages if status.stability else []
        defined = [(t.from_, t.to, t.kendall_tau) for t in stages if t.kendall_tau is not None]
        labels = (*key, defined[-1][0], defined[-1][1]) if defined else None
        old = self._tau_labels.pop(key, None)
        if old is not None and old != labels:
            self.rank_stability.remove(*old)
        if labels is not None:
            self.rank_stability.labels(*labels).set(defined[-1][2])
            self._tau_labels[key] = labels

    def set_info(self, namespace: str, ladder: str, phase: str, stage: str, leader: str) -> None:
        key, info = (namespace, ladder), (namespace, ladder, phase, stage, leader)
        with self._lock:
            old = self._info_labels.get(key)
            if old is not None and old != info:
                self.info.remove(*old)
            self.info.labels(*info).set(1)
            self._info_labels[key] = info

    def observe_start(self, namespace: str, times: StartTimes) -> None:
        """One cell's start (each cell once)."""
        if times.pod_created is not None:
            self.cell_pod_creation.labels(namespace).observe(times.pod_created)
        self.cell_scheduling.labels(namespace).observe(times.scheduled)
        self.cell_start.labels(namespace).observe(times.running)

    def result_error(self, namespace: str, ladder: str, reason: str) -> None:
        self.result_errors.labels(namespace, ladder, reason).inc()

    def forget(self, namespace: str, ladder: str) -> None:
        """A deleted ladder: drop its gauges (counters keep their series until restart, by design)."""
        key = (namespace, ladder)
        with self._lock:
            old = self._info_labels.pop(key, None)
            if old is not None:
                self.info.remove(*old)
            old = self._tau_labels.pop(key, None)
            if old is not None:
                self.rank_stability.remove(*old)
            # A label set never written raises KeyError: nothing to remove.
            with suppress(KeyError):
                self.gpus_in_use.remove(namespace, ladder)
            for stage in self._stage_labels.pop(key, set()):
                for state in CELL_STATES:
                    with suppress(KeyError):
                        self.cells.remove(namespace, ladder, stage, state)
                with suppress(KeyError):
                    self.counterfactual.remove(namespace, ladder, stage)
            self._counted_cells.pop(key, None)
            self._counted_decisions.pop(key, None)
            self._queue_seen.pop(key, None)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
