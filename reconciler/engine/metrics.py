"""Prometheus metrics of the reconciler: served by `watch`, written as a textfile by `check`/`apply`.

One `Metrics` object per process owns its own registry (no process/platform
collectors, so a node-exporter textfile holds only our families). The engine
calls one function after each pass (`record_pass`) or check (`record_check`);
`serve(address)` exposes the registry over HTTP and `write_textfile(path)`
writes it atomically in the text exposition format node-exporter reads.

Families (all prefixed `reconciler_`):
  passes_total{result}                      passes run: converged | partial | error
  pass_duration_seconds                     histogram of pass durations
  actions_total{kind,outcome}               add/replace/repair/delete/backoff by ok/failed/failing
  attachments{state}                        attachments by state after the last pass/check
  drift_detected_total / drift_repaired_total
  last_successful_pass_timestamp_seconds    end of the last converged pass
  last_pass_timestamp_seconds               end of the last pass, whatever its result
  spec_errors                               spec files/entries that failed to load
  pool_addresses_used{network} / pool_addresses_total{network} / pool_usage_ratio{network}
  checks_total{result}                      `check` runs: in_sync | drift | error
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reconciler.engine.apply import Engine, PassReport
    from reconciler.engine.pools import PoolUsage

log = logging.getLogger(__name__)

STATES = ("in_sync", "drifted", "failed", "failing", "kept", "pending")
RESULTS = ("converged", "partial", "error")
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """The metric families of one reconciler process, in a registry of their own."""

    def __init__(self, address: str | None = None) -> None:
        """`address` (HOST:PORT): also serve this registry there and make it the process-wide one."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no *_created series: they only add noise to textfiles and scrapes
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.passes = Counter("reconciler_passes", "Reconcile passes run, by result", ["result"], registry=r)
        self.pass_duration = Histogram(
            "reconciler_pass_duration_seconds", "Duration of reconcile passes", buckets=BUCKETS, registry=r
        )
        self.actions = Counter(
            "reconciler_actions", "Attachment actions taken, by kind and outcome", ["kind", "outcome"], registry=r
        )
        self.attachments = Gauge("reconciler_attachments", "Attachments by state", ["state"], registry=r)
        self.drift_detected = Counter("reconciler_drift_detected", "Drifted attachments detected", registry=r)
        self.drift_repaired = Counter("reconciler_drift_repaired", "Drifted attachments repaired", registry=r)
        self.last_success = Gauge(
            "reconciler_last_successful_pass_timestamp_seconds", "Unix time of the last converged pass", registry=r
        )
        self.last_pass = Gauge("reconciler_last_pass_timestamp_seconds", "Unix time of the last pass", registry=r)
        self.spec_errors = Gauge("reconciler_spec_errors", "Spec errors in the last pass or check", registry=r)
        self.pool_used = Gauge("reconciler_pool_addresses_used", "Allocated addresses", ["network"], registry=r)
        self.pool_total = Gauge(
            "reconciler_pool_addresses_total", "Allocatable addresses (host-local ranges)", ["network"], registry=r
        )
        self.pool_ratio = Gauge("reconciler_pool_usage_ratio", "used / total addresses", ["network"], registry=r)
        self.checks = Counter("reconciler_checks", "check runs, by result", ["result"], registry=r)
        for state in STATES:
            self.attachments.labels(state=state).set(0)
        for result in RESULTS:
            self.passes.labels(result=result)
        self._pools: set[str] = set()
        self.engine: Engine | None = None  # when set, every pass also refreshes the pool figures
        if address:
            global _DEFAULT
            _DEFAULT = self
            self.serve(address)

    def observe(self, report: PassReport | None) -> None:
        """Watcher `on_pass` callback: count the pass (pool figures when `engine` is set)."""
        self.record_pass(report, self.engine)

    # ---- recording
    def record_pass(self, report: PassReport | None, engine: Engine | None = None, error: bool = False) -> None:
        """Count one apply/watch pass (None or `error` = the pass raised before it could report)."""
        now = time.time()
        self.last_pass.set(now)
        if report is None or error:
            self.passes.labels(result="error").inc()
            return
        self.passes.labels(result="converged" if report.exit_code == 0 else "partial").inc()
        if report.finished and report.started:
            self.pass_duration.observe(max(report.finished - report.started, 0.0))
        for out in report.outcomes:
            self.actions.labels(kind=out.action, outcome=out.result).inc()
            if out.action == "repair" and out.result in ("ok", "failing"):
                self.drift_repaired.inc()
        drifted = sum(1 for s in report.plan.steps if s.kind in ("repair", "backoff"))
        self.drift_detected.inc(drifted)
        self.spec_errors.set(len(report.plan.errors))
        if report.exit_code == 0:
            self.last_success.set(report.finished or now)
        self._states_from_pass(report)
        if engine is not None:
            self.record_pools_of(engine)

    def _states_from_pass(self, report: PassReport) -> None:
        counts = dict.fromkeys(STATES, 0)
        results = {o.key: o.result for o in report.outcomes}
        for step in report.plan.steps:
            if step.kind == "delete":
                continue
            if step.kind == "kept":
                counts["kept"] += 1
                continue
            result = results.get(step.key, "ok")
            if result in ("failed", "failing"):
                counts[result] += 1
            elif result == "skipped":
                counts["pending"] += 1
            else:
                counts["in_sync"] += 1
        for state, n in counts.items():
            self.attachments.labels(state=state).set(n)

    def record_check(self, drift: dict[str, list[str]], in_sync: int, spec_errors: int = 0,
                     error: bool = False) -> None:
        """Count one `check` run: `drift` maps each drifted attachment to what drifted."""
        drifted = sum(1 for v in drift.values() if v)
        result = "error" if error else ("drift" if drifted else "in_sync")
        self.checks.labels(result=result).inc()
        if error:
            return
        self.drift_detected.inc(drifted)
        self.spec_errors.set(spec_errors)
        for state in STATES:
            self.attachments.labels(state=state).set(0)
        self.attachments.labels(state="in_sync").set(in_sync)
        self.attachments.labels(state="drifted").set(drifted)

    def record_pools(self, pools: list[PoolUsage]) -> None:
        seen = set()
        for p in pools:
            seen.add(p.network)
            self.pool_used.labels(network=p.network).set(p.used)
            if p.total is not None:
                self.pool_total.labels(network=p.network).set(p.total)
                self.pool_ratio.labels(network=p.network).set(p.ratio or 0.0)
        for gone in self._pools - seen:  # a network removed from the specs stops being reported
            for gauge in (self.pool_used, self.pool_total, self.pool_ratio):
                with contextlib.suppress(KeyError):
                    gauge.remove(gone)
        self._pools = seen

    def record_pools_of(self, engine: Engine) -> None:
        from reconciler.engine.pools import usage_for

        try:
            self.record_pools(usage_for(engine.specs_dir, engine.state_dir))
        except Exception as err:  # figures are best effort; never fail a pass for them
            log.warning("pool usage: %s", err)

    # ---- output
    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def write_textfile(self, path: str | os.PathLike[str]) -> None:
        """Atomically replace `path` (temp file in the same directory, fsync, rename)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.exposition())
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def serve(self, address: str) -> Any:
        """Serve /metrics on HOST:PORT ("[::1]:9120" for IPv6) in a daemon thread; returns the server."""
        from prometheus_client import start_http_server

        host, port = parse_address(address)
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics: serving on http://%s/metrics", address)
        return server


def parse_address(address: str) -> tuple[str, int]:
    """HOST:PORT -> (host, port); an empty host means loopback, never all interfaces by accident."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--metrics-address {address!r}: expected HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


_DEFAULT: Metrics | None = None


def default() -> Metrics:
    """The process-wide Metrics (created on first use, so commands without metrics never import the client)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Metrics()
    return _DEFAULT


def record_pass(report: PassReport | None, engine: Engine | None = None) -> None:
    """Hook for apply/watch: count this pass in the process-wide metrics."""
    default().record_pass(report, engine)


def record_check(drift: dict[str, list[str]], in_sync: int, spec_errors: int = 0, engine: Engine | None = None) -> None:
    """Hook for check."""
    m = default()
    m.record_check(drift, in_sync, spec_errors)
    if engine is not None:
        m.record_pools_of(engine)


def serve(address: str) -> Any:
    return default().serve(address)


def write_textfile(path: str | os.PathLike[str]) -> None:
    default().write_textfile(path)
