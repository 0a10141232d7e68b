"""Logs: one JSON object per stderr line with --log-format json; a plugin's stdout stays pure JSON."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.cnitest import exec_plugin


def json_lines(text: str) -> list[dict]:
    """Every non-empty line must be one JSON object (the test fails on the first that is not)."""
    out = []
    for line in text.splitlines():
        if line.strip():
            obj = json.loads(line)
            assert isinstance(obj, dict), line
            out.append(obj)
    return out


def test_apply_logs_json_lines_with_fields(ops_rig):
    ops_rig.write_specs()
    proc = ops_rig.run("--log-format", "json", "--log-level", "DEBUG", "apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = json_lines(proc.stderr)
    assert lines, "no log lines at DEBUG"
    for obj in lines:
        assert {"time", "level", "msg"} <= set(obj), obj
        assert obj["time"].endswith("Z")
    actions = [o for o in lines if o.get("action") == "add"]
    assert len(actions) == 3, lines
    for obj in actions:
        assert obj["network"] == ops_rig.network
        assert obj["container_id"].startswith(ops_rig.prefix)
        assert obj["outcome"] == "ok"
        assert isinstance(obj["duration"], (int, float))
    summary = [o for o in lines if o.get("action") == "pass"]
    assert summary and summary[-1]["outcome"] == "converged"


def test_env_selects_json_logs(ops_rig):
    ops_rig.write_specs()
    proc = ops_rig.run("apply", env={"RECONCILER_LOG_FORMAT": "json", "RECONCILER_LOG_LEVEL": "INFO"})
    assert proc.returncode == 0, proc.stderr
    assert any(o.get("action") == "pass" for o in json_lines(proc.stderr))
    # and stdout is still the human report, untouched by logging
    assert "Apply: 3 done" in proc.stdout


def test_text_logs_are_not_json(ops_rig):
    ops_rig.write_specs()
    proc = ops_rig.run("--log-level", "INFO", "apply")
    assert proc.returncode == 0
    line = next(ln for ln in proc.stderr.splitlines() if "pass converged" in ln)
    assert not line.startswith("{") and "action=pass" in line



def test_log_flags_after_the_command_name(ops_rig):
    ops_rig.write_specs()
    proc = ops_rig.run("--log-format", "text", "apply", "--log-format", "json", "--log-level", "INFO")
    assert proc.returncode == 0, proc.stderr
    assert any(o.get("action") == "pass" for o in json_lines(proc.stderr))  # the later flag wins
    proc = ops_rig.run("--log-level", "INFO", "status")  # given before the name only: kept
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("command", ["plan", "check", "apply"])
def test_a_usage_error_exits_1_not_a_verdict(ops_rig, command):
    """argparse's own exit code is 2, which `check` uses for drift and `plan` for pending changes."""
    ops_rig.write_specs()
    proc = ops_rig.run(command, "--no-such-flag")
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "unrecognized arguments: --no-such-flag" in proc.stderr and proc.stdout == ""
    assert not ops_rig.our_namespaces()  # nothing ran

@pytest.mark.parametrize("fmt", ["json", "text"])
def test_plugin_stdout_stays_pure_json_when_verbose(plugin_dir, host_netns, make_netns, tmp_path, fmt):
    host, _ = host_netns
    _, ctr = make_netns("rcn-c-")
    tag = uuid.uuid4().hex[:5]
    conf = {
        "cniVersion": "1.0.0", "name": f"rcnl{tag}", "type": "bridge", "bridge": f"rcnl{tag}",
        "isGateway": True, "ipMasq": True,  # ipMasq: the firewall layer logs its backend choice
        "ipam": {"type": "host-local", "subnet": "10.199.77.0/24", "dataDir": str(tmp_path / "ipam")},
    }
    env = {"RECONCILER_LOG_LEVEL": "DEBUG", "RECONCILER_LOG_FORMAT": fmt, "RECONCILER_NO_WARM": "1"}
    result: dict = {}
    for command in ("ADD", "CHECK", "DEL"):
        payload = dict(conf)
        if command == "CHECK":
            payload["prevResult"] = result
        run = exec_plugin(plugin_dir / "bridge", command, payload, netns=ctr, container_id=f"rcn{tag}",
                          extra_env=env, netns_exec=host)
        assert run.code == 0, run.stdout + run.stderr
        if command == "ADD":
            result = json.loads(run.stdout)  # the whole stdout is exactly one JSON document
            if fmt == "json":
                assert json_lines(run.stderr), "verbose logging produced nothing on stderr"
            assert result["ips"][0]["address"].startswith("10.199.77.")
        else:
            assert run.stdout == ""
        if fmt == "json":
            json_lines(run.stderr)
    err = exec_plugin(plugin_dir / "bridge", "ADD", {**conf, "ipam": {"type": "host-local"}}, netns=ctr, extra_env=env,
                      netns_exec=host)
    assert err.code != 0
    assert set(json.loads(err.stdout)) >= {"code", "msg"}  # errors too: one JSON object on stdout
