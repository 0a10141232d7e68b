"""Prometheus metrics for `reconciler watch --metrics-address` (prometheus-client, imported lazily)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class Metrics:
    """Pass counters and per-result gauges, updated after every pass."""

    def __init__(self, address: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        self.registry = CollectorRegistry()
        self.passes = Counter("reconciler_passes", "Reconcile passes run", ["converged"], registry=self.registry)
        self.duration = Gauge("reconciler_last_pass_seconds", "Duration of the last pass", registry=self.registry)
        self.last = Gauge("reconciler_last_pass_timestamp_seconds", "End time of the last pass",
                          registry=self.registry)
        self.actions = Counter("reconciler_actions", "Attachment actions by kind and result", ["action", "result"],
                               registry=self.registry)
        self.spec_errors = Gauge("reconciler_spec_errors", "Spec errors in the last pass", registry=self.registry)
        self.attachments = Gauge("reconciler_attachments", "Attachments by last planned state", ["state"],
                                 registry=self.registry)
        host, _, port = address.rpartition(":")
        start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
        log.info("metrics on http://%s/metrics", address)

    def observe(self, report: Any) -> None:
        summary = report.summary()
        self.passes.labels(converged=str(bool(summary["converged"])).lower()).inc()
        self.duration.set(summary["duration"])
        self.last.set(summary["finished"])
        self.spec_errors.set(len(report.plan.errors))
        for out in report.outcomes:
            self.actions.labels(action=out.action, result=out.result).inc()
        counts = report.plan.counts()
        for state in ("noop", "add", "replace", "repair", "delete", "kept", "backoff"):
            self.attachments.labels(state=state).set(counts.get(state, 0))
