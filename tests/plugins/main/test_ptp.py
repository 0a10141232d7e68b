"""ptp: ours vs the reference, container <-> host traffic, DEL/CHECK edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run, wait_until
from tests.plugins.main.maintest import (
    REFERENCE,
    World,
    addrs_state,
    links_state,
    normalise_result,
    ping,
    read_sysctl,
    routes_state,
)

DUAL = {"type": "host-local", "ranges": [[{"subnet": "10.78.0.0/24"}], [{"subnet": "fd00:78::/64"}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}
V4 = {"type": "host-local", "subnet": "10.78.0.0/24", "routes": [{"dst": "0.0.0.0/0"}]}


@pytest.fixture
def world(make_netns, plugin_dir, tmp_path) -> World:
    host, _ = make_netns("rcn-h-")
    return World(host, make_netns, tmp_path / "ipam", f"{plugin_dir}:{REFERENCE}")


def conf(world: World, version: str = "1.0.0", ipam: dict | None = None, **fields) -> dict:
    return {"cniVersion": version, "name": world.net, "type": "ptp", **fields,
            "ipam": dict(ipam or V4, dataDir=str(world.data_dir))}


def ours(world: World) -> Path:
    return Path(world.cni_path.split(":")[0]) / "ptp"


def allocated(world: World) -> list[str]:
    d = world.data_dir / world.net
    return sorted(p.name for p in d.iterdir() if p.name[0].isdigit() or ":" in p.name) if d.exists() else []


@pytest.mark.parametrize("case", ["v4", "dual-mtu", "dns"])
def test_differential_against_reference(world, case, make_netns, reference_plugins, tmp_path):
    fields: dict = {"dual-mtu": {"mtu": 1400}, "dns": {"dns": {"nameservers": ["10.78.0.53"]}}}.get(case, {})
    ipam = DUAL if case == "dual-mtu" else V4
    ref_host, _ = make_netns("rcn-h-")
    ref = World(ref_host, make_netns, tmp_path / "ipam-ref", str(REFERENCE), net=world.net)
    results, states = [], []
    for w, binary in ((world, ours(world)), (ref, REFERENCE / "ptp")):
        cname, ns = w.container()
        c = conf(w, "1.0.0", ipam, **fields)
        r = w.run(binary, "ADD", c, ns)
        assert r.code == 0, f"{binary}: {r.stdout}{r.stderr}"
        results.append(normalise_result(r.json, {ns: "SANDBOX"}))
        states.append({
            "host_links": links_state(w.host), "host_addrs": addrs_state(w.host), "host_routes": routes_state(w.host),
            "cont_links": links_state(cname), "cont_addrs": addrs_state(cname), "cont_routes": routes_state(cname),
            "sysctls": {k: read_sysctl(w.host, k) for k in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")},
        })
        chk = w.run(binary, "CHECK", {**c, "prevResult": r.json}, ns)
        assert chk.code == 0, f"{binary} CHECK: {chk.stdout}{chk.stderr}"
        assert w.run(binary, "DEL", {**c, "prevResult": r.json}, ns).code == 0
        assert links_state(w.host) == [] and links_state(cname) == []
    assert results[0] == results[1]
    for key in states[0]:
        assert states[0][key] == states[1][key], key


def test_container_reaches_host_and_back(world):
    cname, ns = world.container()
    r = world.run(ours(world), "ADD", conf(world, ipam=DUAL), ns)
    assert r.code == 0, r.stdout + r.stderr
    assert ping(cname, "10.78.0.1") and ping(cname, "fd00:78::1")
    assert ping(world.host, "10.78.0.2") and ping(world.host, "fd00:78::2")


def test_two_containers_route_through_the_host(world):
    (n1, p1), (n2, p2) = world.container(), world.container()
    assert world.run(ours(world), "ADD", conf(world), p1, container_id="a").code == 0
    assert world.run(ours(world), "ADD", conf(world), p2, container_id="b").code == 0
    assert ping(n1, "10.78.0.3") and ping(n2, "10.78.0.2")


def test_del_twice_and_after_netns_deleted(world):
    name, ns = world.container()
    c = conf(world)
    r = world.run(ours(world), "ADD", c, ns)
    assert r.code == 0 and allocated(world) == ["10.78.0.2"]
    run("ip", "netns", "delete", name)
    for _ in range(2):
        d = world.run(ours(world), "DEL", {**c, "prevResult": r.json}, ns)
        assert d.code == 0, d.stdout + d.stderr
    assert allocated(world) == []
    # the kernel removes a deleted namespace's veth pairs asynchronously, which an in-process DEL can outrun
    assert wait_until(lambda: links_state(world.host) == [], timeout=10), links_state(world.host)


def test_add_twice_keeps_the_first_attachment(world):
    _, ns = world.container()
    c = conf(world)
    first = world.run(ours(world), "ADD", c, ns)
    again = world.run(ours(world), "ADD", c, ns)
    assert first.code == 0 and again.code == 1 and "already exists" in again.json["msg"]
    assert allocated(world) == ["10.78.0.2"]
    assert world.run(ours(world), "CHECK", {**c, "prevResult": first.json}, ns).code == 0


@pytest.mark.parametrize("fields,needle", [(dict(mtu=65536), "mtu"), (dict(ipam={}), "ipam"),
                                           (dict(ipMasqBackend="x"), "ipMasqBackend")])
def test_bad_config(world, fields, needle):
    cname, ns = world.container()
    c = conf(world, **fields)
    if "ipam" in fields:
        c["ipam"] = fields["ipam"]
    r = world.run(ours(world), "ADD", c, ns)
    assert r.code == 1 and r.json["code"] == 7 and needle.lower() in r.json["msg"].lower(), r.stdout
    assert links_state(world.host) == [] and links_state(cname) == [] and allocated(world) == []


def test_check_reports_host_side_drift(world):
    cname, ns = world.container()
    c = conf(world)
    r = world.run(ours(world), "ADD", c, ns)
    hv = r.json["interfaces"][0]["name"]
    run("ip", "-n", world.host, "route", "del", "10.78.0.2/32", "dev", hv)
    chk = world.run(ours(world), "CHECK", {**c, "prevResult": r.json}, ns)
    assert chk.code == 1 and "host route 10.78.0.2/32" in chk.json["msg"]
    run("ip", "-n", world.host, "route", "add", "10.78.0.2/32", "dev", hv, "scope", "host")
    run("ip", "-n", world.host, "addr", "del", "10.78.0.1/32", "dev", hv)
    chk = world.run(ours(world), "CHECK", {**c, "prevResult": r.json}, ns)
    assert chk.code == 1 and "gateway address 10.78.0.1/32" in chk.json["msg"]


def test_ipmasq_removed_on_del_without_netns(world):
    pytest.importorskip("reconciler.kernel.firewall.masquerade", reason="firewall backend not available yet")
    import subprocess

    name, ns = world.container()
    c = conf(world, ipMasq=True, ipMasqBackend="iptables")
    r = world.run(ours(world), "ADD", c, ns)
    assert r.code == 0, r.stdout + r.stderr

    def chains() -> list[str]:
        out = subprocess.run(["ip", "netns", "exec", world.host, "iptables-legacy-save", "-t", "nat"],
                             capture_output=True, text=True).stdout
        return [ln for ln in out.splitlines() if ln.startswith(":CNI-")]

    assert len(chains()) == 1
    run("ip", "netns", "delete", name)
    assert world.run(ours(world), "DEL", {**c, "prevResult": r.json}, ns).code == 0
    assert chains() == []


def test_gc_removes_masquerade_of_invalid_attachments_and_status_forwards(world):
    pytest.importorskip("reconciler.kernel.firewall.masquerade", reason="firewall backend not available yet")
    import subprocess

    c = conf(world, "1.1.0", ipMasq=True, ipMasqBackend="iptables")
    (_, p1), (_, p2) = world.container(), world.container()
    assert world.run(ours(world), "ADD", c, p1, container_id="keep").code == 0
    assert world.run(ours(world), "ADD", c, p2, container_id="gone").code == 0

    def chains() -> int:
        out = subprocess.run(["ip", "netns", "exec", world.host, "iptables-legacy-save", "-t", "nat"],
                             capture_output=True, text=True).stdout
        return sum(1 for ln in out.splitlines() if ln.startswith(":CNI-"))

    assert chains() == 2
    gc = world.run(ours(world), "GC", {**c, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]},
                   "")
    assert gc.code == 0, gc.stdout + gc.stderr
    assert chains() == 1
    assert world.run(ours(world), "STATUS", c, "").code == 0
