"""``/metrics``: the Prometheus text format, built from the reader's latest sample at scrape
time (a collector of its own registry, so nothing global is touched)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from conveyor.contrib.dashboard.data import Reader, registry_count

#: Run-time and wait-time histogram bucket bounds, seconds.
BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0)


class _Collector(Collector):
    def __init__(self, reader: Reader) -> None:
        self.reader = reader

    def collect(self) -> Iterator[Metric]:
        reader = self.reader
        depth = GaugeMetricFamily("conveyor_queue_messages", "Messages per queue and state",
                                  labels=["queue", "state"])
        for name, q in reader.queues().items():
            for state, count in q.items():
                depth.add_metric([name, state], count)
        yield depth
        workers = reader.live_workers()
        yield GaugeMetricFamily("conveyor_workers_alive", "Workers in the registry",
                                value=len(workers))
        processed = GaugeMetricFamily("conveyor_worker_processed",
                                      "Tasks a worker processed since it started",
                                      labels=["worker"])
        failed = GaugeMetricFamily("conveyor_worker_failed",
                                   "Tasks that failed on a worker since it started",
                                   labels=["worker"])
        busy = GaugeMetricFamily("conveyor_worker_busy", "Tasks running on a worker now",
                                 labels=["worker"])
        for name, entry in workers.items():
            processed.add_metric([name], float(registry_count(entry.get("processed"))))
            failed.add_metric([name], float(registry_count(entry.get("failed"))))
            busy.add_metric([name], float(registry_count(entry.get("active"))))
        yield processed
        yield failed
        yield busy
        if not reader.can_query:
            return
        states = GaugeMetricFamily("conveyor_tasks_last_hour",
                                   "Records written in the last hour by state (capped at "
                                   "1000 each), queue and task name (of the latest 500)",
                                   labels=["state", "queue", "task"])
        by: dict[tuple[str, str, str], int] = {}
        runtimes: list[tuple[tuple[str, str], float]] = []
        waits: list[tuple[tuple[str, str], float]] = []
        for row in reader.tasks(limit=500)["tasks"]:
            where = (str(row["queue"] or ""), str(row["task"] or ""))
            by[(str(row["state"]), *where)] = by.get((str(row["state"]), *where), 0) + 1
            if row["state"] == "SUCCESS" and row["runtime"] is not None:
                runtimes.append((where, float(row["runtime"])))
            if row.get("wait") is not None:
                waits.append((where, float(row["wait"])))
        for labels, count in sorted(by.items()):
            states.add_metric(list(labels), count)
        yield states
        yield _histogram("conveyor_task_runtime_seconds", "Run time of the latest successful "
                         "tasks (of the latest 500 records)", runtimes)
        yield _histogram("conveyor_task_wait_seconds", "Wait from due to the last start of "
                         "the latest tasks (of the latest 500 records)", waits)


def _histogram(name: str, doc: str, values: list[tuple[tuple[str, str], float]]) -> Metric:
    hist = HistogramMetricFamily(name, doc, labels=["queue", "task"])
    for where in sorted({where for where, _ in values}):
        mine = [v for w, v in values if w == where]
        buckets: list[tuple[str, float]] = [
            (repr(b), float(sum(1 for v in mine if v <= b))) for b in BUCKETS]
        buckets.append(("+Inf", float(len(mine))))
        hist.add_metric(list(where), buckets, sum_value=sum(mine))
    return hist


def render_metrics(reader: Reader) -> tuple[bytes, str]:
    """The metrics page body and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(reader))
    body: Any = generate_latest(registry)
    return bytes(body), CONTENT_TYPE_LATEST
