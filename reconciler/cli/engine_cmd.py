"""`reconciler plan|apply|check|gc|status|watch`: the reconciler's commands and exit codes.

plan/check: 0 in sync, 2 changes pending or drift found, 1 error (bad flags too: `cli.Parser`).
apply: 0 converged, 3 partial, 1 error (bad flags, lock held with --no-wait, state unreadable).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)


def _common(p: argparse.ArgumentParser, output: bool = True) -> None:
    p.add_argument("--specs", default=os.environ.get("RECONCILER_SPECS", "./specs"), help="specs directory")
    p.add_argument("--state", default=os.environ.get("RECONCILER_STATE", "./state"), help="state directory")
    if output:
        p.add_argument("--output", choices=("text", "json"), default="text")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="show what apply would do (exit 2 when there are changes)")
    _common(p)
    p.add_argument("--verbose", "-v", action="store_true", help="also list attachments in sync")
    p.set_defaults(handler=cmd_plan)
    p = sub.add_parser("apply", help="make the host match the specs (exit 3 when partial)")
    _common(p)
    p.add_argument("--no-wait", action="store_true", help="exit 1 at once if another reconciler holds the lock")
    p.add_argument("--metrics-textfile", default=None, help="write this run's metrics for node-exporter")
    p.set_defaults(handler=cmd_apply)
    p = sub.add_parser("check", help="CNI CHECK every owned attachment (exit 2 on drift)")
    _common(p)
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing when in sync (drift and spec errors are still printed)")
    p.add_argument("--no-wait", action="store_true", help="exit 1 at once if a pass is running")
    p.add_argument("--metrics-textfile", default=None, help="write this run's metrics for node-exporter")
    p.set_defaults(handler=cmd_check)
    p = sub.add_parser("gc", help="free leaked allocations, orphaned cache entries and namespaces")
    _common(p)
    p.add_argument("--grace", type=float, default=300.0, help="seconds a leak must stay unreferenced (300)")
    p.add_argument("--no-wait", action="store_true")
    p.set_defaults(handler=cmd_gc)
    p = sub.add_parser("status", help="attachments, their last action and the last pass")
    _common(p)
    p.set_defaults(handler=cmd_status)
    p = sub.add_parser("watch", help="reconcile on file changes, every --interval, and on SIGHUP")
    _common(p)
    p.add_argument("--interval", type=float, default=30.0, help="periodic resync in seconds (30)")
    p.add_argument("--debounce", type=float, default=0.5, help="quiet time before a pass on file events")
    p.add_argument("--metrics-address", default=None, help="HOST:PORT for Prometheus metrics")
    p.add_argument("--socket", default="", help="warm-path plugin socket (default /run/cni-reconciler/plugin.sock)")
    p.add_argument("--no-serve", action="store_true", help="do not serve the plugins' warm path")
    p.set_defaults(handler=cmd_watch)


def _engine(args: argparse.Namespace) -> Any:
    from reconciler.engine.apply import Engine

    show = None if getattr(args, "output", "text") == "text" else False
    return Engine(args.specs, args.state, show_progress=show)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "output", "text") == "json":
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif text:
        print(text)


def _telemetry(hook: str, *args: Any) -> None:
    """Call an ops hook (metrics, structured log lines, textfile) if that module is present."""
    try:
        from reconciler.engine import telemetry
    except ImportError:
        return
    getattr(telemetry, hook)(*args)


def _fail(msg: str) -> int:
    print(f"reconciler: {msg}", file=sys.stderr)
    return 1


def cmd_plan(args: argparse.Namespace) -> int:
    from reconciler.engine.status import render_plan
    from reconciler.errors import ReconcilerError

    try:
        engine = _engine(args)
        plan, _ = engine.plan()
    except ReconcilerError as err:
        return _fail(str(err))
    _emit(args, plan.to_json(), render_plan(plan, args.verbose))
    if plan.errors:
        return 1  # broken spec files are an error, whatever else the plan holds
    return 2 if plan.has_changes else 0


def cmd_apply(args: argparse.Namespace) -> int:
    from reconciler.engine.lock import state_lock
    from reconciler.errors import ReconcilerError

    try:
        engine = _engine(args)
        with state_lock(engine.state_dir, wait=not args.no_wait):
            report = engine.apply()
    except ReconcilerError as err:
        _telemetry("after_error", args.metrics_textfile)
        return _fail(str(err))
    _telemetry("after_pass", report, engine, args.metrics_textfile)
    lines = [f"recovered: {r}" for r in report.recovered]
    lines += [f"error: {e}" for e in report.plan.errors]
    for out in report.outcomes:
        extra = f": {out.error}" if out.error and out.result != "ok" else ""
        ips = f" {','.join(out.ips)}" if out.ips else ""
        lines.append(f"{out.action} {out.key}: {out.result}{ips}{extra}")
    if not report.outcomes:
        lines.append("Nothing to do: the host matches the specs." if not report.plan.errors else "")
    done = sum(1 for o in report.outcomes if o.result == "ok")
    lines.append(f"Apply: {done} done, {len(report.failed)} failed, {len(report.plan.errors)} spec error(s).")
    data = {"summary": report.summary(), "outcomes": [o.__dict__ for o in report.outcomes],
            "plan": report.plan.to_json()}
    _emit(args, data, "\n".join(line for line in lines if line))
    return report.exit_code


def cmd_check(args: argparse.Namespace) -> int:
    from reconciler.engine.lock import state_lock
    from reconciler.errors import ReconcilerError

    try:
        engine = _engine(args)
        with state_lock(engine.state_dir, wait=not args.no_wait, shared=True):
            specs = engine.load()
            records = engine.inventory.records()
            obs = engine.observe(records)
    except ReconcilerError as err:
        _telemetry("after_error", args.metrics_textfile, True)
        return _fail(str(err))
    drift = {k: v for k, v in obs.drift.items() if v}
    missing = sorted(k for k in specs.attachments if k not in records)
    for key in missing:
        drift[key] = ["not applied (desired in " + specs.attachments[key].file + ")"]
    in_sync = len(records) - len([k for k in drift if k in records])
    _telemetry("after_check", drift, in_sync, len(specs.errors), engine, args.metrics_textfile)
    if not args.quiet or drift or specs.errors:  # --quiet speaks only when something is wrong (cron mails it)
        lines = [f"spec error: {e}" for e in specs.errors]
        for key in sorted(drift):
            lines.append(f"DRIFT {key}:")
            lines += [f"  - {d}" for d in drift[key]]
        lines.append(f"Check: {in_sync} in sync, {len(drift)} drifted.")
        data = {"drift": drift, "in_sync": in_sync, "spec_errors": [str(e) for e in specs.errors]}
        _emit(args, data, "\n".join(lines))
    return 2 if drift else 0


def cmd_gc(args: argparse.Namespace) -> int:
    from reconciler.engine.gc import run_gc
    from reconciler.engine.lock import state_lock
    from reconciler.errors import ReconcilerError

    try:
        engine = _engine(args)
        with state_lock(engine.state_dir, wait=not args.no_wait):
            report = run_gc(engine, args.grace)
    except ReconcilerError as err:
        return _fail(str(err))
    lines = [f"freed {f}" for f in report.freed] + [f"deleted netns {n}" for n in report.namespaces]
    lines += [f"pending (grace) {p}" for p in report.pending] + [f"skipped {s}" for s in report.skipped]
    lines += [f"error: {e}" for e in report.errors]
    lines.append(f"GC: {len(report.freed)} freed, {len(report.pending)} waiting out the grace period.")
    _emit(args, report.to_json(), "\n".join(lines))
    return 1 if report.errors else 0


def cmd_status(args: argparse.Namespace) -> int:
    from reconciler.engine.inventory import Inventory
    from reconciler.engine.status import render_status, status_data
    from reconciler.errors import ReconcilerError

    try:
        data = status_data(Inventory(args.state))
    except ReconcilerError as err:
        return _fail(str(err))
    from reconciler.engine.pools import render_usage, with_pools

    pools = with_pools(data, args.specs, args.state)  # a one-line health summary first, pool usage last
    _emit(args, data, "\n".join((data["health"], render_status(data), render_usage(pools))))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from reconciler.engine.watch import Watcher

    engine = _engine(args)
    engine.show_progress = False
    if args.metrics_address:
        _telemetry("serve_metrics", args.metrics_address)

    def on_pass(report: Any) -> None:
        _telemetry("after_pass", report, engine)

    watcher = Watcher(engine, interval=args.interval, debounce=args.debounce, on_pass=on_pass)
    return watcher.run(serve_socket=None if args.no_serve else args.socket)
