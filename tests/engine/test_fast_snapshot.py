"""The raw-netlink snapshot every CHECK and every reconcile pass reads (kernel.snapshot, kernel.rtnl)
against iproute2's own view of the same namespaces (`ip -j`)."""

from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest

from reconciler.kernel import nldump, snapshot

TABLES = {"main": 254, "local": 255, "default": 253}


def sh(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True, capture_output=True)


def ip_json(ns: str, *args: str) -> list:
    return json.loads(subprocess.run(["ip", "-j", "-n", ns, *args], check=True, capture_output=True, text=True).stdout)


def iproute_view(ns: str) -> tuple[set, set, set]:
    links = ip_json(ns, "-d", "link", "show")
    index = {lk["ifname"]: lk["ifindex"] for lk in links}
    link_view = {(lk["ifindex"], lk["ifname"], lk.get("address", ""), lk["mtu"], "UP" in lk["flags"],
                  lk["operstate"], lk.get("linkinfo", {}).get("info_kind", ""),
                  lk.get("linkinfo", {}).get("info_slave_kind", ""), lk.get("ifalias", ""),
                  index.get(lk.get("master")))
                 for lk in links}
    addr_view = {(lk["ifindex"], ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}"))
                 for lk in ip_json(ns, "addr", "show") for a in lk.get("addr_info", [])}
    route_view = set()
    for family in ("-4", "-6"):
        for r in ip_json(ns, family, "route", "show", "table", "all"):
            dst = "0.0.0.0/0" if family == "-4" else "::/0"
            dst = dst if r["dst"] == "default" else r["dst"]
            table = r.get("table", "main")
            route_view.add((ipaddress.ip_network(dst, strict=False), r.get("gateway"), index.get(r.get("dev")),
                            TABLES.get(table) or int(table), r.get("metric")))
    return link_view, addr_view, route_view


def our_view(path: str) -> tuple[set, set, set]:
    snap = snapshot.read(path)
    links = {(lk.index, lk.name, lk.mac, lk.mtu, lk.up, lk.operstate, lk.kind, lk.slave_kind, lk.alias, lk.master)
             for lk in snap.links}
    addrs = {(a.index, a.address) for a in snap.addresses}
    routes = {(r.dst, str(r.gateway) if r.gateway else None, r.oif, r.table,
               r.priority if r.family == 6 or r.priority else None) for r in snap.routes}
    return links, addrs, routes


def test_snapshot_matches_iproute2(make_netns):
    host, host_path = make_netns("rcn-fs-")
    cont, cont_path = make_netns("rcn-fs-")
    sh(f"ip -n {host} link set lo up; ip -n {cont} link set lo up")
    sh(f"ip -n {host} link add br0 type bridge; ip -n {host} link set br0 up")
    sh(f"ip -n {host} addr add 10.99.0.1/24 dev br0; ip -n {host} addr add fd00:99::1/64 dev br0 nodad")
    sh(f"ip -n {host} link add veth0 type veth peer name eth0 netns {cont}")
    sh(f"ip -n {host} link set veth0 master br0 alias port-of-c mtu 1400 up")
    sh(f"ip -n {cont} link set eth0 up; ip -n {cont} addr add 10.99.0.2/24 dev eth0")
    sh(f"ip -n {cont} addr add fd00:99::2/64 dev eth0 nodad; ip -n {cont} route add default via 10.99.0.1")
    sh(f"ip -n {cont} route add 10.5.0.0/16 via 10.99.0.1 table 100 metric 5")
    for name, path in ((host, host_path), (cont, cont_path)):
        links, addrs, routes = our_view(path)
        want_links, want_addrs, want_routes = iproute_view(name)
        assert links == want_links
        assert addrs == want_addrs
        assert routes == want_routes
    port = nldump.read(host_path).link("veth0")
    assert port is not None and port.alias == "port-of-c" and port.mtu == 1400 and port.slave_kind == "bridge"
    assert port.slave_info.get("IFLA_BRPORT_STATE") is not None  # kind-specific data, decoded on demand
    assert snapshot.read(host_path).link("br0").info.get("IFLA_BR_STP_STATE") == 0


def test_prime_fills_the_shared_block_and_skips_gone_namespaces(make_netns):
    _name, path = make_netns("rcn-fs-")
    with snapshot.shared():
        got = nldump.prime([path, "/run/netns/rcn-fs-does-not-exist"])
        assert got["/run/netns/rcn-fs-does-not-exist"] is None
        assert snapshot.snapshot(path) is got[path]  # the plugins' CHECKs reuse the primed read


def test_routes_are_read_on_first_use_and_then_kept(make_netns):
    name, path = make_netns("rcn-fs-")
    sh(f"ip -n {name} link add rcnd0 type veth peer name rcnd1; ip -n {name} link set rcnd0 up")
    sh(f"ip -n {name} link set rcnd1 up; ip -n {name} addr add 10.98.0.1/24 dev rcnd0")
    snap = snapshot.read(path)
    sh(f"ip -n {name} route add 10.97.0.0/16 via 10.98.0.2")  # after the links and addresses were read
    wanted = ipaddress.ip_network("10.97.0.0/16")
    assert any(r.dst == wanted for r in snap.routes)  # the route dump happens here, on first use
    sh(f"ip -n {name} route del 10.97.0.0/16")
    assert any(r.dst == wanted for r in snap.routes)  # and is kept: one dump per snapshot
    assert not any(r.dst == wanted for r in snapshot.read(path).routes)


def test_namespace_created_in_process_like_ip_netns_add():
    import os
    import uuid

    from reconciler.kernel import namespaces

    name = f"rcn-fs-{uuid.uuid4().hex[:6]}"
    before = os.readlink("/proc/thread-self/ns/net")
    try:
        assert namespaces.create(name)
        assert os.readlink("/proc/thread-self/ns/net") == before  # the thread came back
        assert not namespaces.create(name)
        assert name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        lo = nldump.read(f"/run/netns/{name}").link("lo")
        assert lo is not None and lo.up
        assert os.stat(f"/run/netns/{name}").st_ino != os.stat("/proc/self/ns/net").st_ino
    finally:
        namespaces.delete(name)
    assert not namespaces.exists(name)


def test_a_namespace_file_with_nothing_mounted_is_refused_then_cleared():
    """A file at /run/netns/NAME with no namespace on it (its mount lost): create() says so rather
    than answering "exists" for a path no plugin can enter; clear_stale() removes it, and only it."""
    import os
    import uuid

    from reconciler.kernel import namespaces

    name = f"rcn-fs-{uuid.uuid4().hex[:6]}"
    path = f"/run/netns/{name}"
    try:
        assert namespaces.create(name)
        assert not namespaces.clear_stale(name)  # mounted: kept
        subprocess.run(["umount", path], check=True)
        assert os.path.isfile(path) and not namespaces.exists(name)
        with pytest.raises(OSError, match="no network namespace is mounted"):
            namespaces.create(name)
        assert namespaces.clear_stale(name) and not os.path.exists(path)
        assert not namespaces.clear_stale(name)  # gone: nothing to do
        assert namespaces.create(name) and namespaces.exists(name)
    finally:
        namespaces.delete(name)
    assert not os.path.exists(path)
