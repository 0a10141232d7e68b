"""`reconciler status` starts with a one-line health summary and shows pool usage per network."""

from __future__ import annotations

import json


def test_status_health_and_pools(ops_rig):
    rig = ops_rig
    rig.write_specs()
    before = rig.run("status")
    assert before.returncode == 0, before.stderr
    assert before.stdout.splitlines()[0].startswith("Health: UNKNOWN")

    assert rig.run("apply").returncode == 0
    out = rig.run("status").stdout
    lines = out.splitlines()
    assert lines[0].startswith("Health: HEALTHY: 3/3 attachments applied, 0 failing"), out
    assert f"fullest pool {rig.network} 3/253" in lines[0]
    assert any(line.split()[:2] == [rig.network, "3/253"] for line in lines), out

    data = json.loads(rig.run("status", "--output", "json").stdout)
    assert data["health"].startswith("Health: HEALTHY")
    pool = next(p for p in data["pools"] if p["network"] == rig.network)
    assert (pool["used"], pool["total"]) == (3, 253)

    # a broken attachment file: degraded, and what it described is kept
    (rig.specs / "apps.toml").write_text((rig.specs / "apps.toml").read_text() + "\nbogus = [\n")
    assert rig.run("apply").returncode == 3
    out = rig.run("status").stdout
    assert out.splitlines()[0].startswith("Health: DEGRADED"), out
    assert "spec error" in out.splitlines()[0]
