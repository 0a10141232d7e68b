"""What the commands call after a pass or a check: metrics, structured log lines, the textfile.

One call per command keeps the hooks in the CLI and the watch loop to a line:
`after_pass(report, engine, textfile)` for apply/watch, `after_check(...)` for
check. Each action of a pass is logged as one line carrying the fields the
JSON log format exposes (network, container_id, ifname, action, outcome,
duration), plus one summary line per pass (action "pass").
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from reconciler.engine import metrics

if TYPE_CHECKING:
    from reconciler.engine.apply import Engine, PassReport

log = logging.getLogger("reconciler.pass")


def log_pass(report: PassReport) -> None:
    """One log line per action (duration: since the previous action ended) and a summary line."""
    previous = report.started
    for out in report.outcomes:
        network, cid, ifname = (out.key.split("/", 2) + ["", ""])[:3]
        duration = round(max(out.time - previous, 0.0), 3)
        previous = max(previous, out.time)
        level = logging.WARNING if out.result in ("failed", "failing") else logging.INFO
        log.log(level, "%s %s: %s%s", out.action, out.key, out.result, f" ({out.error})" if out.error else "",
                extra={"network": network, "container_id": cid, "ifname": ifname, "action": out.action,
                       "outcome": out.result, "duration": duration})
    summary = report.summary()
    outcome = "converged" if summary["converged"] else "partial"
    log.info("pass %s: %d action(s), %d failed, %d spec error(s)", outcome, len(report.outcomes),
             summary["failed"], len(report.plan.errors),
             extra={"action": "pass", "outcome": outcome, "duration": summary["duration"]})


def _textfile(path: str | os.PathLike[str] | None) -> None:
    if not path:
        return
    try:
        metrics.write_textfile(path)
    except OSError as err:
        log.error("cannot write metrics textfile %s: %s", path, err)


def after_pass(report: PassReport | None, engine: Engine | None = None,
               textfile: str | os.PathLike[str] | None = None) -> None:
    """Count the pass (None: it failed before reporting), log its actions, write the textfile if asked."""
    metrics.record_pass(report, engine)
    if report is not None:
        log_pass(report)
    _textfile(textfile)


def after_check(drift: dict[str, list[str]], in_sync: int, spec_errors: int = 0, engine: Engine | None = None,
                textfile: str | os.PathLike[str] | None = None) -> None:
    """Count a check run and write the textfile if asked."""
    metrics.record_check(drift, in_sync, spec_errors, engine)
    for key, problems in sorted(drift.items()):
        if problems:
            network, cid, ifname = (key.split("/", 2) + ["", ""])[:3]
            log.info("drift %s: %s", key, "; ".join(problems),
                     extra={"network": network, "container_id": cid, "ifname": ifname, "action": "check",
                            "outcome": "drift"})
    _textfile(textfile)


def after_error(textfile: str | os.PathLike[str] | None = None, check: bool = False) -> None:
    """The command failed before it could report (bad specs dir, lock, state): count an error."""
    m = metrics.default()
    if check:
        m.record_check({}, 0, error=True)
    else:
        m.record_pass(None)
    _textfile(textfile)


def serve_metrics(address: str) -> None:
    """`watch --metrics-address`: serve the process-wide registry (a bad address is an error)."""
    metrics.serve(address)
