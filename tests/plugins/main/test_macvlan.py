"""macvlan: a veth inside the host namespace acts as the shared master; ours vs the reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run
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

MASTER = "rcnm0"
V4 = {"type": "host-local", "subnet": "10.79.0.0/24", "routes": [{"dst": "10.200.0.0/16", "gw": "10.79.0.1"}]}


def make_world(make_netns, cni_path: str, data_dir: Path, net: str | None = None) -> World:
    host, _ = make_netns("rcn-h-")
    run("ip", "-n", host, "link", "add", MASTER, "mtu", "1450", "type", "veth", "peer", "name", "rcnm0p")
    run("ip", "-n", host, "link", "set", "rcnm0p", "up")
    run("ip", "-n", host, "link", "set", MASTER, "up")
    run("ip", "-n", host, "addr", "add", "10.79.255.1/24", "dev", MASTER)
    run("ip", "-n", host, "route", "add", "default", "via", "10.79.255.254", "dev", MASTER)
    w = World(host, make_netns, data_dir, cni_path)
    if net:
        w.net = net
    return w


@pytest.fixture
def world(make_netns, plugin_dir, tmp_path) -> World:
    return make_world(make_netns, f"{plugin_dir}:{REFERENCE}", tmp_path / "ipam")


def conf(world: World, version: str = "1.0.0", ipam: dict | None = None, **fields) -> dict:
    c = {"cniVersion": version, "name": world.net, "type": "macvlan", "master": MASTER, **fields}
    c["ipam"] = dict(ipam or V4, dataDir=str(world.data_dir)) if ipam != {} else {}
    return c


def ours(world: World) -> Path:
    return Path(world.cni_path.split(":")[0]) / "macvlan"


def allocated(world: World) -> list[str]:
    d = world.data_dir / world.net
    return sorted(p.name for p in d.iterdir() if p.name[0].isdigit() or ":" in p.name) if d.exists() else []


CASES = {
    "bridge-v4": {},
    "private-mtu": {"mode": "private", "mtu": 1400},
    "vepa-l2": {"mode": "vepa", "ipam": {}},
    "default-master": {"master": ""},
    "dual": {"ipam": {"type": "host-local", "ranges": [[{"subnet": "10.79.0.0/24"}], [{"subnet": "fd00:79::/64"}]],
                      "routes": [{"dst": "0.0.0.0/0", "gw": "10.79.0.1"}]}},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_differential_against_reference(world, case, make_netns, reference_plugins, tmp_path):
    fields = dict(CASES[case])
    ipam = fields.pop("ipam", None)
    ref = make_world(make_netns, str(REFERENCE), tmp_path / "ipam-ref", net=world.net)
    results, states = [], []
    for w, binary in ((world, ours(world)), (ref, REFERENCE / "macvlan")):
        cname, ns = w.container()
        c = conf(w, "1.0.0", ipam, **fields)
        if fields.get("master") == "":
            del c["master"]
        r = w.run(binary, "ADD", c, ns, cni_args="IgnoreUnknown=1;MAC=0a:58:0a:4f:00:09")
        assert r.code == 0, f"{binary}: {r.stdout}{r.stderr}"
        assert r.json["interfaces"][0]["mac"] == "0a:58:0a:4f:00:09"
        results.append(normalise_result(r.json, {ns: "SANDBOX"}))
        states.append({"cont_links": links_state(cname), "cont_addrs": addrs_state(cname),
                       "cont_routes": routes_state(cname), "host_links": links_state(w.host),
                       "arp_notify": read_sysctl(cname, "net.ipv4.conf.eth0.arp_notify")})
        if w is world:  # unsolicited NAs with IPv6 addresses only, as upstream since #974 (after 1.1.1)
            has_v6 = any(":" in ip["address"] for ip in r.json.get("ips", []))
            assert read_sysctl(cname, "net.ipv6.conf.eth0.ndisc_notify") == ("1" if has_v6 else "0")
        chk = w.run(binary, "CHECK", {**c, "prevResult": r.json}, ns)
        if w is world or ipam != {}:  # v1.1.1 runs IPAM CHECK even without IPAM
            assert chk.code == 0, f"{binary} CHECK: {chk.stdout}{chk.stderr}"
        assert w.run(binary, "DEL", {**c, "prevResult": r.json}, ns).code == 0
        assert links_state(cname) == []
    assert results[0] == results[1]
    for key in states[0]:
        assert states[0][key] == states[1][key], key


def test_containers_on_a_shared_master_reach_each_other(world):
    (n1, p1), (n2, p2) = world.container(), world.container()
    c = conf(world, ipam={"type": "host-local", "ranges": [[{"subnet": "10.79.0.0/24"}], [{"subnet": "fd00:79::/64"}]]})
    r1 = world.run(ours(world), "ADD", c, p1, container_id="a")
    r2 = world.run(ours(world), "ADD", c, p2, container_id="b")
    assert r1.code == 0 and r2.code == 0, r1.stdout + r1.stderr + r2.stdout
    assert ping(n1, "10.79.0.3") and ping(n2, "10.79.0.2")
    assert ping(n1, "fd00:79::3")


def test_del_twice_and_after_netns_deleted(world):
    name, ns = world.container()
    c = conf(world)
    r = world.run(ours(world), "ADD", c, ns)
    assert r.code == 0 and allocated(world) == ["10.79.0.2"]
    run("ip", "netns", "delete", name)
    for _ in range(2):
        d = world.run(ours(world), "DEL", {**c, "prevResult": r.json}, ns)
        assert d.code == 0, d.stdout + d.stderr
    assert allocated(world) == []


def test_del_of_a_config_that_became_invalid_cleans_up(world, make_netns, reference_plugins):
    """The reference checks `mode` on ADD only: its DEL of such a config succeeds, so ours must."""
    name, ns = world.container()
    c = conf(world)
    r = world.run(ours(world), "ADD", c, ns)
    assert r.code == 0 and allocated(world) == ["10.79.0.2"]
    broken = {**c, "mode": "bogus", "prevResult": r.json}
    for binary in (ours(world), REFERENCE / "macvlan"):
        d = world.run(binary, "DEL", broken, ns)
        assert d.code == 0, (binary, d.stdout + d.stderr)
    assert allocated(world) == [] and "eth0" not in links_state(name)


def test_link_in_container(world, make_netns):
    cname, ns = world.container()
    run("ip", "-n", cname, "link", "add", "rcnin0", "type", "veth", "peer", "name", "rcnin1")
    run("ip", "-n", cname, "link", "set", "rcnin0", "up")
    c = conf(world, master="rcnin0", linkInContainer=True)
    r = world.run(ours(world), "ADD", c, ns)
    assert r.code == 0, r.stdout + r.stderr
    assert [lk for lk in links_state(cname) if lk["name"] == "eth0"][0]["kind"] == "macvlan"
    assert world.run(ours(world), "CHECK", {**c, "prevResult": r.json}, ns).code == 0


@pytest.mark.parametrize("fields,needle", [
    (dict(mode="l3"), "mode"),
    (dict(master="rcn-missing"), "master"),
    (dict(mtu=9000), "mtu"),
    (dict(mtu=-1), "mtu"),
])
def test_bad_config_leaves_nothing(world, fields, needle):
    cname, ns = world.container()
    before = links_state(world.host)
    r = world.run(ours(world), "ADD", conf(world, **fields), ns)
    assert r.code == 1 and r.json["code"] == 7 and needle in r.json["msg"].lower(), r.stdout
    assert links_state(cname) == [] and links_state(world.host) == before and allocated(world) == []


def test_no_default_route_and_no_master_is_a_clear_error(world):
    run("ip", "-n", world.host, "route", "del", "default")
    cname, ns = world.container()
    c = conf(world)
    del c["master"]
    r = world.run(ours(world), "ADD", c, ns)
    assert r.code == 1 and "master" in r.json["msg"] and "default route" in r.json["msg"]


def test_ifname_in_use_is_an_error_and_nothing_is_left(world):
    cname, ns = world.container()
    run("ip", "-n", cname, "link", "add", "eth0", "type", "veth", "peer", "name", "rcnx0")
    r = world.run(ours(world), "ADD", conf(world), ns)
    assert r.code == 1 and "already exists" in r.json["msg"]
    assert sorted(lk["name"] for lk in links_state(cname)) == ["eth0", "rcnx0"] and allocated(world) == []


def test_check_detects_mode_and_address_drift(world):
    cname, ns = world.container()
    c = conf(world)
    r = world.run(ours(world), "ADD", c, ns)
    chk = world.run(ours(world), "CHECK", {**c, "mode": "private", "prevResult": r.json}, ns)
    assert chk.code == 1 and "mode" in chk.json["msg"]
    run("ip", "-n", cname, "addr", "flush", "dev", "eth0")
    chk = world.run(ours(world), "CHECK", {**c, "prevResult": r.json}, ns)
    assert chk.code == 1 and "10.79.0.2/24" in chk.json["msg"]


def test_ipam_failure_rolls_back_the_link(world):
    cname, ns = world.container()
    r = world.run(ours(world), "ADD", conf(world, ipam={"type": "host-local", "subnet": "bogus"}), ns)
    assert r.code != 0
    assert links_state(cname) == []


def test_status_and_gc_forward_to_ipam(world):
    _, ns = world.container()
    c = conf(world, "1.1.0")
    assert world.run(ours(world), "ADD", c, ns, container_id="keep").code == 0
    assert world.run(ours(world), "STATUS", c, "").code == 0
    gc = world.run(ours(world), "GC", {**c, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]},
                   "")
    assert gc.code == 0, gc.stdout + gc.stderr
    assert allocated(world) == ["10.79.0.2"]
