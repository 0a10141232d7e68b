"""Metrics: `watch --metrics-address` serves counters that move on apply and repair; textfiles parse back."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.engine.apply import Outcome, PassReport
from reconciler.engine.metrics import Metrics, parse_address
from reconciler.engine.planner import Plan, Step
from tests.ops.conftest import wait_for


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from the text exposition format."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str | None, name: str, **labels: str) -> float | None:
    if not text:
        return None
    return samples(text).get((name, tuple(sorted(labels.items()))))


# ---- in-process: the real report types, no kernel
def _report(steps: list[tuple[str, str]], outcomes: list[tuple[str, str, str]]) -> PassReport:
    plan = Plan(steps=[Step(kind, key, "n", key.split("/")[1], "eth0", "ns", "why") for kind, key in steps])
    report = PassReport(plan, [Outcome(key, action, result) for key, action, result in outcomes])
    report.finished = report.started + 0.2
    return report


def test_record_pass_counts(tmp_path):
    m = Metrics()
    m.record_pass(_report([("add", "n/a/eth0"), ("add", "n/b/eth0"), ("noop", "n/c/eth0")],
                          [("n/a/eth0", "add", "ok"), ("n/b/eth0", "add", "failed")]))
    m.record_pass(_report([("repair", "n/a/eth0"), ("kept", "n/d/eth0")], [("n/a/eth0", "repair", "ok")]))
    path = tmp_path / "textfile" / "reconciler.prom"
    m.write_textfile(path)
    assert sorted(os.listdir(path.parent)) == ["reconciler.prom"]  # no temporary file left behind
    assert path.stat().st_mode & 0o777 == 0o644
    text = path.read_text()
    assert value(text, "reconciler_passes_total", result="partial") == 1
    assert value(text, "reconciler_passes_total", result="converged") == 1
    assert value(text, "reconciler_actions_total", kind="add", outcome="ok") == 1
    assert value(text, "reconciler_actions_total", kind="add", outcome="failed") == 1
    assert value(text, "reconciler_drift_detected_total") == 1
    assert value(text, "reconciler_drift_repaired_total") == 1
    assert value(text, "reconciler_attachments", state="kept") == 1
    assert value(text, "reconciler_attachments", state="in_sync") == 1
    assert value(text, "reconciler_pass_duration_seconds_count") == 2
    assert value(text, "reconciler_last_successful_pass_timestamp_seconds") > 0


def test_parse_address():
    assert parse_address("127.0.0.1:9120") == ("127.0.0.1", 9120)
    assert parse_address(":9120") == ("127.0.0.1", 9120)
    assert parse_address("[::1]:9120") == ("::1", 9120)
    for bad in ("9120", "host:", "h:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


# ---- real processes against the kernel
def test_apply_and_check_write_textfiles(ops_rig, tmp_path):
    ops_rig.write_specs()
    prom = tmp_path / "node-exporter" / "reconciler.prom"
    proc = ops_rig.run("apply", "--metrics-textfile", str(prom))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = prom.read_text()
    assert value(text, "reconciler_passes_total", result="converged") == 1
    assert value(text, "reconciler_actions_total", kind="add", outcome="ok") == 3
    assert value(text, "reconciler_attachments", state="in_sync") == 3
    assert value(text, "reconciler_pool_addresses_used", network=ops_rig.network) == 3
    assert value(text, "reconciler_pool_addresses_total", network=ops_rig.network) == 253

    proc = ops_rig.run("check", "--quiet", "--metrics-textfile", str(prom))
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr
    text = prom.read_text()
    assert value(text, "reconciler_checks_total", result="in_sync") == 1
    assert value(text, "reconciler_attachments", state="drifted") == 0

    subprocess.run(["ip", "-n", ops_rig.ns("b"), "link", "del", "eth0"], check=True)
    proc = ops_rig.run("check", "--quiet", "--metrics-textfile", str(prom))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "DRIFT" in proc.stdout and ops_rig.ns("b") in proc.stdout  # --quiet speaks only on drift: cron mails it
    text = prom.read_text()
    assert value(text, "reconciler_checks_total", result="drift") == 1
    assert value(text, "reconciler_attachments", state="drifted") == 1
    assert value(text, "reconciler_attachments", state="in_sync") == 2
    assert value(text, "reconciler_drift_detected_total") == 1
    assert sorted(os.listdir(prom.parent)) == ["reconciler.prom"]


def test_watch_serves_metrics_that_move(ops_rig):
    ops_rig.write_specs()
    port = 9120
    watch = ops_rig.popen("watch", "--interval", "3", "--debounce", "0.2", "--metrics-address", f"127.0.0.1:{port}")
    try:
        def converged() -> str | None:
            text = ops_rig.scrape(port)
            ok = (value(text, "reconciler_passes_total", result="converged") or 0) >= 1
            return text if ok and value(text, "reconciler_attachments", state="in_sync") == 3 else None

        text = wait_for(converged, timeout=120)
        assert text, f"watch never reported a converged pass: {ops_rig.scrape(port)}"
        assert value(text, "reconciler_actions_total", kind="add", outcome="ok") == 3
        assert value(text, "reconciler_pool_addresses_used", network=ops_rig.network) == 3
        assert value(text, "reconciler_last_successful_pass_timestamp_seconds") > time.time() - 600
        assert value(text, "reconciler_pass_duration_seconds_count") >= 1

        # drift: the container interface disappears; a forced pass repairs it and the counters say so
        subprocess.run(["ip", "-n", ops_rig.ns("a"), "link", "del", "eth0"], check=True)
        watch.send_signal(signal.SIGHUP)

        def repaired() -> str | None:
            text = ops_rig.scrape(port)
            return text if (value(text, "reconciler_drift_repaired_total") or 0) >= 1 else None

        text = wait_for(repaired, timeout=120)
        assert text, f"no repair counted: {ops_rig.scrape(port)}"
        assert (value(text, "reconciler_drift_detected_total") or 0) >= 1
        assert (value(text, "reconciler_actions_total", kind="repair", outcome="ok") or 0) >= 1
        assert ops_rig.addrs(ops_rig.ns("a"))  # and it really is back

        # a removed attachment: deleted, and the pool shrinks
        lines = (ops_rig.specs / "apps.toml").read_text().split("[[attachment]]")
        (ops_rig.specs / "apps.toml").write_text("[[attachment]]".join(lines[:-1]))

        def pruned() -> str | None:
            text = ops_rig.scrape(port)
            return text if value(text, "reconciler_pool_addresses_used", network=ops_rig.network) == 2 else None

        text = wait_for(pruned, timeout=120)
        assert text, f"pool usage never dropped: {ops_rig.scrape(port)}"
        assert (value(text, "reconciler_actions_total", kind="delete", outcome="ok") or 0) >= 1
    finally:
        watch.send_signal(signal.SIGTERM)
        try:
            code = watch.wait(timeout=120)
        except subprocess.TimeoutExpired:
            watch.kill()
            code = watch.wait()
    assert code == 0, watch.stderr.read() if watch.stderr else ""
