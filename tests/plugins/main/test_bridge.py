"""bridge: ours exec'd like a runtime would, inside a namespace standing in for the host, against the reference."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run, wait_until
from tests.plugins.main.maintest import (
    REFERENCE,
    World,
    addrs_state,
    ip_json,
    links_state,
    normalise_result,
    ping,
    read_sysctl,
    routes_state,
    stp_id_and_mac,
)

BR = "rcnbr0"


@pytest.fixture
def world(make_netns, plugin_dir, tmp_path) -> World:
    host, _ = make_netns("rcn-h-")
    return World(host, make_netns, tmp_path / "ipam", f"{plugin_dir}:{REFERENCE}")


def conf(world: World, version: str = "1.0.0", ipam: dict | None = None, **fields) -> dict:
    base: dict = {"cniVersion": version, "name": world.net, "type": "bridge", "bridge": BR}
    base.update(fields)
    if ipam is None:
        ipam = {"type": "host-local", "subnet": "10.77.0.0/24", "dataDir": str(world.data_dir)}
    base["ipam"] = ipam
    return base


def ours(world: World) -> Path:
    return Path(world.cni_path.split(":")[0]) / "bridge"


def allocated(world: World) -> list[str]:
    d = world.data_dir / world.net
    return sorted(p.name for p in d.iterdir() if p.name[0].isdigit() or ":" in p.name) if d.exists() else []


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_add_check_del(world, version, ip_in):
    _, ns = world.container()
    c = conf(world, version, isGateway=True)
    r = world.run(ours(world), "ADD", c, ns)
    assert r.code == 0, r.stdout + r.stderr
    res = r.json
    assert res["cniVersion"] == version
    names = [i["name"] for i in res["interfaces"]]
    assert names[0] == BR and names[1].startswith("veth") and len(names[1]) == 12 and names[2] == "eth0"
    assert res["interfaces"][2]["sandbox"] == ns and "sandbox" not in res["interfaces"][1]
    assert res["ips"][0]["address"] == "10.77.0.2/24" and res["ips"][0]["gateway"] == "10.77.0.1"
    assert res["ips"][0]["interface"] == 2
    assert ("rcnbr0", "10.77.0.1/24") in addrs_state(world.host)
    if version >= "0.4.0":
        chk = world.run(ours(world), "CHECK", {**c, "prevResult": res}, ns)
        assert chk.code == 0, chk.stdout + chk.stderr
    for _ in range(2):
        d = world.run(ours(world), "DEL", {**c, "prevResult": res}, ns)
        assert d.code == 0, d.stdout + d.stderr
    assert allocated(world) == []
    assert [lk["name"] for lk in links_state(world.host)] == [BR]  # the bridge stays, the veth is gone


DIFF_CASES = {
    "gateway-v4": dict(isGateway=True),
    "default-gw-dual": dict(isDefaultGateway=True, ipam={"type": "host-local", "ranges": [
        [{"subnet": "10.77.0.0/24"}], [{"subnet": "fd00:77::/64"}]]}),
    "l2-only": dict(ipam={}),
    "mtu-hairpin": dict(mtu=1400, hairpinMode=True, isGateway=True),
    "promisc": dict(promiscMode=True),
    "routes-dns": dict(isGateway=True, ipam={"type": "host-local", "subnet": "10.77.0.0/24",
                                             "routes": [{"dst": "10.200.0.0/16"}, {"dst": "0.0.0.0/0"}]},
                       dns={"nameservers": ["10.77.0.53"]}),
}


# v1.1.1's CHECK fails on its own ADD here: it calls IPAM CHECK with no IPAM (L2), and looks for
# routes without a gateway literally (ours resolves the gateway as ADD applied it).
REF_CHECK_BROKEN = {"l2-only", "routes-dns"}


@pytest.mark.parametrize("case", sorted(DIFF_CASES))
def test_differential_against_reference(world, case, make_netns, reference_plugins, tmp_path):
    fields = dict(DIFF_CASES[case])
    ipam = fields.pop("ipam", None)
    ref_host, _ = make_netns("rcn-h-")
    ref = World(ref_host, make_netns, tmp_path / "ipam-ref", str(REFERENCE), net=world.net)
    results, states = [], []
    for w, binary in ((world, ours(world)), (ref, REFERENCE / "bridge")):
        cname, ns = w.container()
        ip = dict(ipam, dataDir=str(w.data_dir)) if ipam else ipam
        if ip is not None and not ip:
            ip = {}
        c = conf(w, "1.0.0", ip, **fields)
        r = w.run(binary, "ADD", c, ns, cni_args="IgnoreUnknown=1;MAC=0a:58:0a:4d:00:09")
        assert r.code == 0, f"{binary}: {r.stdout}{r.stderr}"
        results.append(normalise_result(r.json, {ns: "SANDBOX"}))
        assert r.json["interfaces"][2]["mac"] == "0a:58:0a:4d:00:09"
        sysctls = {k: read_sysctl(cname, k) for k in (
            "net.ipv6.conf.eth0.accept_dad", "net.ipv4.conf.eth0.arp_notify", "net.ipv6.conf.eth0.disable_ipv6")}
        sysctls.update({f"host:{k}": read_sysctl(w.host, k) for k in (
            "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", f"net.ipv6.conf.{BR}.accept_ra")})
        states.append({
            "host_links": links_state(w.host), "host_addrs": addrs_state(w.host),
            "host_routes": routes_state(w.host), "cont_links": links_state(cname),
            "cont_addrs": addrs_state(cname), "cont_routes": routes_state(cname), "sysctls": sysctls,
        })
        chk = w.run(binary, "CHECK", {**c, "prevResult": r.json}, ns)
        if w is world or case not in REF_CHECK_BROKEN:
            assert chk.code == 0, f"{binary} CHECK: {chk.stdout}{chk.stderr}"
        d = w.run(binary, "DEL", {**c, "prevResult": r.json}, ns)
        assert d.code == 0, f"{binary} DEL: {d.stdout}{d.stderr}"
    assert results[0] == results[1]
    for key in states[0]:
        assert states[0][key] == states[1][key], key


def test_two_containers_ping_each_other_and_gateway(world):
    c = conf(world, isGateway=True, ipam={"type": "host-local", "ranges": [
        [{"subnet": "10.77.0.0/24"}], [{"subnet": "fd00:77::/64"}]], "dataDir": str(world.data_dir)})
    (n1, p1), (n2, p2) = world.container(), world.container()
    r1 = world.run(ours(world), "ADD", c, p1, container_id="a")
    r2 = world.run(ours(world), "ADD", c, p2, container_id="b")
    assert r1.code == 0 and r2.code == 0, r1.stdout + r2.stdout
    a1 = [i["address"].split("/")[0] for i in r1.json["ips"]]
    a2 = [i["address"].split("/")[0] for i in r2.json["ips"]]
    assert ping(n1, a2[0]) and ping(n2, a1[0])
    assert ping(n1, a2[1]) and ping(n2, a1[1])  # IPv6 usable right after ADD returned
    assert ping(n1, "10.77.0.1") and ping(n2, "fd00:77::1")
    assert len([lk for lk in links_state(world.host) if lk["kind"] == "bridge"]) == 1


def test_concurrent_adds_create_one_bridge(world):
    c = conf(world, isGateway=True)
    spaces = [world.container() for _ in range(4)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda i: world.run(ours(world), "ADD", c, spaces[i][1], container_id=f"c{i}"),
                             range(4)))
    assert all(r.code == 0 for r in runs), [r.stdout + r.stderr for r in runs]
    assert len({r.json["ips"][0]["address"] for r in runs}) == 4
    kinds = [lk["kind"] for lk in links_state(world.host)]
    assert kinds.count("bridge") == 1 and kinds.count("veth") == 4


def test_del_after_netns_deleted_releases_address(world):
    name, ns = world.container()
    c = conf(world, isGateway=True)
    r = world.run(ours(world), "ADD", c, ns)
    assert r.code == 0
    assert allocated(world) == ["10.77.0.2"]
    run("ip", "netns", "delete", name)
    d = world.run(ours(world), "DEL", {**c, "prevResult": r.json}, ns)
    assert d.code == 0, d.stdout + d.stderr
    assert allocated(world) == []
    # the kernel removes a deleted namespace's veth pairs asynchronously, which an in-process DEL can outrun
    assert wait_until(lambda: [lk["kind"] for lk in links_state(world.host)] == ["bridge"], timeout=10), \
        links_state(world.host)
    d2 = world.run(ours(world), "DEL", c, "")
    assert d2.code == 0, d2.stdout


def test_add_twice_fails_and_keeps_the_first(world):
    _, ns = world.container()
    c = conf(world, isGateway=True)
    first = world.run(ours(world), "ADD", c, ns)
    assert first.code == 0
    again = world.run(ours(world), "ADD", c, ns)
    assert again.code != 0 and "already exists" in again.json["msg"]
    assert allocated(world) == ["10.77.0.2"]
    chk = world.run(ours(world), "CHECK", {**c, "prevResult": first.json}, ns)
    assert chk.code == 0, chk.stdout


@pytest.mark.parametrize("fields,needle", [
    (dict(mtu=70000), "mtu"),
    (dict(mtu=10), "mtu"),
    (dict(hairpinMode=True, promiscMode=True), "hairpin"),
    (dict(vlan=5000), "vlan"),
    (dict(vlanTrunk=[{"minID": 10}]), "vlanTrunk"),
    (dict(ipMasqBackend="pf"), "ipMasqBackend"),
    (dict(disableContainerInterface=True), "disableContainerInterface"),
    # JSON types as Go's decoder insists on them: no coercion of strings, numbers or floats
    (dict(isGateway="yes"), "isGateway: Input should be a valid boolean"),
    (dict(ipMasq=1), "ipMasq"),
    (dict(mtu="1500"), "mtu: Input should be a valid integer"),
    (dict(mtu=1500.0), "mtu"),
    (dict(bridge=7), "bridge"),
])
def test_bad_config_is_rejected_with_the_field_named(world, fields, needle):
    _, ns = world.container()
    r = world.run(ours(world), "ADD", conf(world, **fields), ns)
    assert r.code == 1 and r.json["code"] == 7, r.stdout
    assert needle.lower() in r.json["msg"].lower()
    assert links_state(world.host) == [] and allocated(world) == []


def test_existing_non_bridge_link_is_an_error_and_nothing_is_left(world):
    run("ip", "-n", world.host, "link", "add", BR, "type", "veth", "peer", "name", "rcnpeer0")
    before = links_state(world.host)
    cname, ns = world.container()
    r = world.run(ours(world), "ADD", conf(world, isGateway=True), ns)
    assert r.code == 1 and "not a bridge" in r.json["msg"], r.stdout
    assert links_state(world.host) == before and links_state(cname) == [] and allocated(world) == []


def test_ifname_in_use_in_container_is_an_error_and_nothing_is_left(world):
    cname, ns = world.container()
    run("ip", "-n", cname, "link", "add", "eth0", "type", "veth", "peer", "name", "rcnx0")
    r = world.run(ours(world), "ADD", conf(world, isGateway=True), ns)
    assert r.code == 1 and "eth0" in r.json["msg"] and "already exists" in r.json["msg"], r.stdout
    assert [lk["kind"] for lk in links_state(world.host)] in ([], ["bridge"])
    assert [lk for lk in links_state(world.host) if lk["kind"] == "veth"] == [] and allocated(world) == []


def test_failed_add_rolls_back_ipam_and_links(world):
    """An address conflict on the bridge fails after IPAM: the reservation and the veth are undone."""
    run("ip", "-n", world.host, "link", "add", BR, "type", "bridge")
    run("ip", "-n", world.host, "addr", "add", "10.5.5.5/24", "dev", BR)
    cname, ns = world.container()
    r = world.run(ours(world), "ADD", conf(world, isGateway=True), ns)
    assert r.code == 1 and "already has an IP address different from" in r.json["msg"], r.stdout
    assert allocated(world) == [] and links_state(cname) == []
    assert [lk["kind"] for lk in links_state(world.host)] == ["bridge"]
    ok = world.run(ours(world), "ADD", conf(world, isGateway=True, forceAddress=True), ns)
    assert ok.code == 0, ok.stdout
    assert ("rcnbr0", "10.77.0.1/24") in addrs_state(world.host)
    assert ("rcnbr0", "10.5.5.5/24") not in addrs_state(world.host)


def test_check_reports_each_drift(world):
    cname, ns = world.container()
    c = conf(world, isGateway=True, ipam={"type": "host-local", "subnet": "10.77.0.0/24",
                                          "routes": [{"dst": "10.200.0.0/16"}], "dataDir": str(world.data_dir)})
    r = world.run(ours(world), "ADD", c, ns)
    assert r.code == 0
    prev = {**c, "prevResult": r.json}
    hostveth = r.json["interfaces"][1]["name"]

    def check_msg() -> str:
        out = world.run(ours(world), "CHECK", prev, ns)
        assert out.code != 0
        return out.json["msg"]

    run("ip", "-n", cname, "route", "del", "10.200.0.0/16")
    assert "route 10.200.0.0/16" in check_msg()
    run("ip", "-n", cname, "route", "add", "10.200.0.0/16", "via", "10.77.0.1")
    run("ip", "-n", cname, "addr", "del", "10.77.0.2/24", "dev", "eth0")
    assert "failed to find ip 10.77.0.2/24" in check_msg()
    run("ip", "-n", cname, "addr", "add", "10.77.0.2/24", "dev", "eth0")
    run("ip", "-n", cname, "route", "replace", "10.200.0.0/16", "via", "10.77.0.1")
    run("ip", "-n", world.host, "link", "set", hostveth, "nomaster")
    assert "not attached to bridge" in check_msg()
    run("ip", "-n", world.host, "link", "set", hostveth, "master", BR)
    run("ip", "-n", cname, "link", "set", "eth0", "address", "0a:00:00:00:00:01")
    assert "MAC" in check_msg()
    run("ip", "-n", world.host, "link", "del", hostveth)
    assert "not found" in check_msg()


def test_check_reports_missing_masquerade_rules_once(world):
    cname, ns = world.container()
    c = conf(world, isGateway=True, ipMasq=True, ipMasqBackend="nftables")
    r = world.run(ours(world), "ADD", c, ns)
    assert r.code == 0, r.stdout + r.stderr
    run("ip", "netns", "exec", world.host, "nft", "delete", "table", "inet", "cni_plugins_masquerade")
    out = world.run(ours(world), "CHECK", {**c, "prevResult": r.json}, ns)
    assert out.code != 0 and out.json["msg"].startswith("ipMasq: ") and "ipMasq: ipMasq" not in out.json["msg"], out.stdout
    assert world.run(ours(world), "DEL", {**c, "prevResult": r.json}, ns).code == 0


@pytest.mark.parametrize("gateway", [False, True], ids=["l2", "gateway"])
def test_a_created_bridge_takes_its_stp_id_from_its_mac(world, gateway, make_netns, reference_plugins, tmp_path):
    """The bridge id is the pinned MAC, as the reference's is: a bridge whose id stayed zero would win
    every root election the moment someone turned STP on, on whatever LAN its uplink joins."""
    ref_host, _ = make_netns("rcn-h-")
    ref = World(ref_host, make_netns, tmp_path / "ipam-ref", str(REFERENCE), net=world.net)
    for w, binary in ((world, ours(world)), (ref, REFERENCE / "bridge")):
        _, ns = w.container()
        r = w.run(binary, "ADD", conf(w, isGateway=gateway), ns)
        assert r.code == 0, r.stdout + r.stderr
        bridge_id, mac = stp_id_and_mac(ip_json(w.host, "link", "show", BR)[0])
        assert bridge_id == mac != [0] * 6, f"{binary}: bridge id {bridge_id} vs MAC {mac}"
        assert r.json["interfaces"][0]["mac"] == ":".join(f"{b:02x}" for b in mac)


def test_port_isolation_and_mac_from_runtime_config(world):
    cname, ns = world.container()
    c = conf(world, isGateway=True, portIsolation=True, runtimeConfig={"mac": "0a:58:0a:4d:00:42"})
    r = world.run(ours(world), "ADD", c, ns, cni_args="IgnoreUnknown=1;MAC=0a:58:0a:4d:00:09")
    assert r.code == 0, r.stdout + r.stderr
    assert r.json["interfaces"][2]["mac"] == "0a:58:0a:4d:00:42"  # runtimeConfig wins over CNI_ARGS
    veth = [lk for lk in links_state(world.host) if lk["kind"] == "veth"][0]
    assert veth["isolated"] is True


def test_status_and_gc_forward_to_ipam(world):
    _, ns = world.container()
    c = conf(world, "1.1.0", isGateway=True)
    assert world.run(ours(world), "ADD", c, ns, container_id="keep").code == 0
    st = world.run(ours(world), "STATUS", c, "")
    assert st.code == 0, st.stdout + st.stderr
    gc = world.run(ours(world), "GC", {**c, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]},
                   "")
    assert gc.code == 0, gc.stdout + gc.stderr
    assert allocated(world) == ["10.77.0.2"]


def _masq_chains(host: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", host, "iptables-legacy-save", "-t", "nat"], capture_output=True, text=True)
    return sorted(line.split()[0][1:] for line in out.stdout.splitlines() if line.startswith(":CNI-"))


def test_ipmasq_setup_teardown_and_gc(world):
    pytest.importorskip("reconciler.kernel.firewall.masquerade", reason="firewall backend not available yet")
    c = conf(world, "1.1.0", isGateway=True, ipMasq=True, ipMasqBackend="iptables")
    (n1, p1), (_, p2) = world.container(), world.container()
    r1 = world.run(ours(world), "ADD", c, p1, container_id="m1")
    r2 = world.run(ours(world), "ADD", c, p2, container_id="m2")
    assert r1.code == 0 and r2.code == 0, r1.stdout + r1.stderr + r2.stdout
    assert len(_masq_chains(world.host)) == 2
    chk = world.run(ours(world), "CHECK", {**c, "prevResult": r1.json}, p1, container_id="m1")
    assert chk.code == 0, chk.stdout
    # DEL after the netns is gone still removes the masquerade rules (from prevResult's addresses)
    run("ip", "netns", "delete", n1)
    d = world.run(ours(world), "DEL", {**c, "prevResult": r1.json}, p1, container_id="m1")
    assert d.code == 0, d.stdout + d.stderr
    assert len(_masq_chains(world.host)) == 1
    # GC removes m2's rules when m2 is not a valid attachment any more
    gc = world.run(ours(world), "GC", {**c, "cni.dev/valid-attachments": []}, "")
    assert gc.code == 0, gc.stdout + gc.stderr
    assert _masq_chains(world.host) == []
    assert json.loads(json.dumps(r2.json))["ips"][0]["address"].startswith("10.77.0.")


def test_check_tolerates_interfaces_appended_by_later_plugins(world):
    """bandwidth appends an ifb to the result: bridge CHECK must skip host interfaces that are not veths."""
    _, ns = world.container()
    c = conf(world, isGateway=True)
    r = world.run(ours(world), "ADD", c, ns)
    run("ip", "-n", world.host, "link", "add", "rcnbwp0", "type", "ifb")
    prev = dict(r.json, interfaces=r.json["interfaces"] + [{"name": "rcnbwp0", "mac": "0a:00:00:00:00:99"}])
    chk = world.run(ours(world), "CHECK", {**c, "prevResult": prev}, ns)
    assert chk.code == 0, chk.stdout


def test_in_process_with_host_netns_argument(world, monkeypatch):
    """The reconciler's path: skel.dispatch in this process, host-side work in args.host_netns."""
    from reconciler.cni.args import CmdArgs
    from reconciler.cni.skel import dispatch, load_module

    cname, ns = world.container()
    c = conf(world, isGateway=True)
    module = load_module("bridge")
    out = dispatch(module, CmdArgs.build("ADD", json.dumps(c).encode(), container_id="inproc", netns=ns,
                                         ifname="eth0", path=world.cni_path, host_netns=f"/run/netns/{world.host}"))
    assert out["ips"][0]["address"] == "10.77.0.2/24"
    assert ("rcnbr0", "10.77.0.1/24") in addrs_state(world.host)
    assert ping(cname, "10.77.0.1")
    args = CmdArgs.build("CHECK", json.dumps({**c, "prevResult": out}).encode(), container_id="inproc", netns=ns,
                         ifname="eth0", path=world.cni_path, host_netns=f"/run/netns/{world.host}")
    assert dispatch(module, args) is None
    args = CmdArgs.build("DEL", json.dumps({**c, "prevResult": out}).encode(), container_id="inproc", netns=ns,
                         ifname="eth0", path=world.cni_path, host_netns=f"/run/netns/{world.host}")
    assert dispatch(module, args) is None
    assert [lk["kind"] for lk in links_state(world.host)] == ["bridge"] and allocated(world) == []


def test_in_process_bridge_mac_stays_pinned_and_a_recreated_bridge_is_pinned_again(world):
    """A long-lived process pins a bridge's MAC once and remembers the pin (bridge.host.pin_mac); a bridge
    deleted and re-created under the same name, unpinned, is pinned again: a port with a lower MAC
    joining afterwards changes neither."""
    from reconciler.cni.args import CmdArgs
    from reconciler.cni.skel import dispatch, load_module

    module = load_module("bridge")
    c = conf(world, isGateway=True)
    host = f"/run/netns/{world.host}"

    def add(cid: str) -> dict:
        _, ns = world.container()
        return dispatch(module, CmdArgs.build("ADD", json.dumps(c).encode(), container_id=cid, netns=ns,
                                              ifname="eth0", path=world.cni_path, host_netns=host))

    def bridge_mac() -> str:
        return next(lk["address"] for lk in _links(world.host) if lk["ifname"] == BR)

    def low_port(name: str) -> None:  # a port whose MAC is lower than any random one: an unpinned bridge takes it
        run("ip", "-n", world.host, "link", "add", name, "address", "02:00:00:00:00:01", "type", "veth")
        run("ip", "-n", world.host, "link", "set", name, "master", BR, "up")

    for generation in range(2):
        if generation:  # re-created by someone else, unpinned: the process's memory of the pin must not hold
            run("ip", "-n", world.host, "link", "del", BR)
            run("ip", "-n", world.host, "link", "add", BR, "type", "bridge")
        macs = {add(f"g{generation}c{i}")["interfaces"][0]["mac"] for i in range(3)}
        assert macs == {bridge_mac()}
        low_port(f"rcnlow{generation}")
        assert bridge_mac() == macs.pop() != "02:00:00:00:00:01"


def _links(ns: str) -> list[dict]:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_enabledad_and_disable_container_interface(world):
    (n1, p1), (n2, p2) = world.container(), world.container()
    dad = world.run(ours(world), "ADD", conf(world, isGateway=True, enabledad=True, ipam={
        "type": "host-local", "subnet": "fd00:77::/64", "dataDir": str(world.data_dir)}), p1)
    assert dad.code == 0, dad.stdout + dad.stderr
    assert read_sysctl(n1, "net.ipv6.conf.eth0.accept_dad") == "1"
    assert read_sysctl(n1, "net.ipv6.conf.eth0.enhanced_dad") == "1"
    assert ping(n1, "fd00:77::1")  # DAD finished before ADD returned
    l2 = world.run(ours(world), "ADD", conf(world, ipam={}, disableContainerInterface=True), p2, container_id="l2")
    assert l2.code == 0, l2.stdout + l2.stderr
    eth0 = [lk for lk in links_state(n2) if lk["name"] == "eth0"][0]
    assert eth0["up"] is False and "ips" not in l2.json


def test_ipam_failure_removes_the_bridge_this_add_created(world):
    cname, ns = world.container()
    bad = conf(world, isGateway=True, ipam={"type": "host-local", "subnet": "not-a-subnet",
                                            "dataDir": str(world.data_dir)})
    r = world.run(ours(world), "ADD", bad, ns)
    assert r.code != 0
    assert links_state(world.host) == [] and links_state(cname) == []
