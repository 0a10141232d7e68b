"""bridge VLAN options need bridge VLAN filtering, which this host's kernel lacks: they run in the VM job."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run
from tests.plugins.main.maintest import REFERENCE, World, addrs_state, normalise_result, ping

pytestmark = pytest.mark.kernelvm
BR = "rcnbr0"


def vlan_filtering_unavailable() -> str | None:
    ns = "rcn-vlanprobe"
    run("ip", "netns", "add", ns, check=False)
    try:
        proc = subprocess.run(["ip", "-n", ns, "link", "add", "rcnbrp", "type", "bridge", "vlan_filtering", "1"],
                              capture_output=True, text=True)
        return None if proc.returncode == 0 else f"bridge vlan_filtering unsupported: {proc.stderr.strip()}"
    finally:
        run("ip", "netns", "delete", ns, check=False)


@pytest.fixture
def world(make_netns, plugin_dir, tmp_path) -> World:
    reason = vlan_filtering_unavailable()
    if reason:
        pytest.skip(reason)
    host, _ = make_netns("rcn-h-")
    return World(host, make_netns, tmp_path / "ipam", f"{plugin_dir}:{REFERENCE}")


def conf(w: World, **fields) -> dict:
    return {"cniVersion": "1.0.0", "name": w.net, "type": "bridge", "bridge": BR, **fields,
            "ipam": {"type": "host-local", "subnet": "10.80.0.0/24", "dataDir": str(w.data_dir)}}


def port_vlans(host: str) -> list[tuple]:
    """(port, vid, flags) with random veth names normalised."""
    data = json.loads(run("bridge", "-n", host, "-j", "vlan", "show").stdout or "[]")
    out = []
    for entry in data:
        name = "vethX" if entry["ifname"].startswith("veth") else entry["ifname"]
        for v in entry.get("vlans", []):
            for vid in range(v["vlan"], v.get("vlanEnd", v["vlan"]) + 1):
                out.append((name, vid, tuple(sorted(v.get("flags", [])))))
    return sorted(out)


def test_vlan_access_port_and_gateway_match_reference(world, make_netns, reference_plugins, tmp_path):
    ref_host, _ = make_netns("rcn-h-")
    ref = World(ref_host, make_netns, tmp_path / "ipam-ref", str(REFERENCE), net=world.net)
    results, states = [], []
    for w, binary in ((world, Path(world.cni_path.split(":")[0]) / "bridge"), (ref, REFERENCE / "bridge")):
        cname, ns = w.container()
        # v1.1.1 keeps VLAN 1 on the port (HEAD's preserveDefaultVlan=true; v1.8 made false the default)
        c = conf(w, vlan=100, isGateway=True, preserveDefaultVlan=True)
        r = w.run(binary, "ADD", c, ns)
        assert r.code == 0, f"{binary}: {r.stdout}{r.stderr}"
        results.append(normalise_result(r.json, {ns: "SANDBOX"}))
        states.append((port_vlans(w.host), addrs_state(w.host)))
        assert ping(cname, "10.80.0.1")
        assert w.run(binary, "CHECK", {**c, "prevResult": r.json}, ns).code == 0
        assert w.run(binary, "DEL", {**c, "prevResult": r.json}, ns).code == 0
    assert results[0] == results[1]
    assert states[0] == states[1]


def test_two_vlans_are_isolated(world):
    (n1, p1), (_, p2), (_, p3) = world.container(), world.container(), world.container()
    ours = Path(world.cni_path.split(":")[0]) / "bridge"
    assert world.run(ours, "ADD", conf(world, vlan=10), p1, container_id="a").code == 0
    assert world.run(ours, "ADD", conf(world, vlan=10), p2, container_id="b").code == 0
    assert world.run(ours, "ADD", conf(world, vlan=20), p3, container_id="c").code == 0
    assert ping(n1, "10.80.0.3")
    assert not ping(n1, "10.80.0.4", attempts=2)


def test_trunk_ports(world):
    _, ns = world.container()
    ours = Path(world.cni_path.split(":")[0]) / "bridge"
    r = world.run(ours, "ADD", conf(world, vlanTrunk=[{"id": 101}, {"minID": 200, "maxID": 202}]), ns)
    assert r.code == 0, r.stdout + r.stderr
    vids = {(vid, flags) for port, vid, flags in port_vlans(world.host) if port == "vethX"}
    assert (1, ("Egress Untagged", "PVID")) in vids
    assert {101, 200, 201, 202} <= {vid for vid, _ in vids}


def test_default_vlan_dropped_unless_preserved(world):
    _, ns = world.container()
    ours = Path(world.cni_path.split(":")[0]) / "bridge"
    assert world.run(ours, "ADD", conf(world, vlan=30), ns).code == 0
    assert [(vid, flags) for port, vid, flags in port_vlans(world.host) if port == "vethX"] == [
        (30, ("Egress Untagged", "PVID"))]
