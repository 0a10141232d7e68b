"""The kernel layer against the real kernel, inside test namespaces only."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import threading

import pytest

from reconciler.kernel import addrs, bridge, devices, links, routes, snapshot, sysctl
from reconciler.kernel import netns as nsmod
from reconciler.kernel.links import LinkExists
from reconciler.kernel.netns import KernelError, LinkNotFound, NetnsNotFound
from tests.conftest import run


@pytest.fixture
def two(make_netns):
    (hn, hp), (cn, cp) = make_netns("rcn-h-"), make_netns()
    return hn, hp, cn, cp


def test_netns_exists_and_run_in(make_netns):
    name, path = make_netns()
    assert nsmod.exists(path) and nsmod.exists(name)
    assert not nsmod.exists("/run/netns/rcn-none-such") and not nsmod.exists("/etc/hostname")
    # New namespaces inherit IPv4 settings from the host's: set the opposite of the host's value inside.
    host_value = sysctl.read("net.ipv4.ip_forward")
    inside = "0" if host_value == "1" else "1"
    subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv4.ip_forward={inside}"], check=True)
    assert nsmod.run_in(path, sysctl._read_many, ["net/ipv4/ip_forward"]) == {"net/ipv4/ip_forward": inside}
    with pytest.raises(NetnsNotFound):
        links.list_links("/run/netns/rcn-none-such")
    assert "rcn-none-such" not in nsmod.list_named()  # never created by a lookup


def test_veth_across_namespaces(two):
    hn, hp, cn, cp = two
    with nsmod.session():
        host, cont = links.create_veth("rcnv0", "eth0", netns=hp, peer_netns=cp, mtu=1400, peer_mac="0a:58:00:00:00:07")
        assert host.kind == cont.kind == "veth" and host.mtu == cont.mtu == 1400
        assert cont.mac == "0a:58:00:00:00:07"
        assert host.link == cont.index and cont.link == host.index
        fresh = links.get("rcnv0", hp)  # the creation's echo (Linux >= 6.3) says what a lookup says
        assert (host.index, host.name, host.mac, host.mtu) == (fresh.index, fresh.name, fresh.mac, fresh.mtu)
        assert links.peer_index("eth0", cp) == host.index
        with pytest.raises(LinkExists):
            links.create_veth("rcnv0", "eth1", netns=hp, peer_netns=cp)
        assert links.find("eth1", cp) is None
        assert links.delete("eth0", cp) is True
        assert links.find("rcnv0", hp) is None  # the pair went together
        assert links.delete("eth0", cp) is False


def test_session_handles_follow_the_namespace_not_its_name(make_netns):
    """A session caches one handle per namespace, found by the namespace itself: a request for X made
    while this thread is inside X (`entered`) reads X, not the host's cached handle; a name deleted
    behind the session's back and made again for a new namespace reads the new one."""
    name, path = make_netns()
    run("ip", "-n", name, "link", "add", "rcnsess0", "type", "veth", "peer", "name", "rcnsess1")
    with nsmod.session():
        host = {lk.name for lk in links.list_links(None)}  # the host's handle, cached
        assert "rcnsess0" not in host
        with nsmod.entered(path):
            assert "rcnsess0" in {lk.name for lk in links.list_links(path)}
            assert "rcnsess0" in {lk.name for lk in links.list_links(None)}  # None: this thread's namespace
        assert {lk.name for lk in links.list_links(None)} == host
        run("ip", "netns", "delete", name)
        run("ip", "netns", "add", name)
        run("ip", "-n", name, "link", "add", "rcnsess2", "type", "veth", "peer", "name", "rcnsess3")
        assert {lk.name for lk in links.list_links(path)} == {"lo", "rcnsess2", "rcnsess3"}


def test_bridge_ensure_port_flags_and_errors(two):
    hn, hp, cn, cp = two
    br, created = bridge.ensure_bridge("rcnbr0", netns=hp, mtu=1450)
    assert created and br.kind == "bridge" and br.mtu == 1450
    assert bridge.ensure_bridge("rcnbr0", netns=hp) == (links.get("rcnbr0", hp), False)
    links.create_veth("rcnv1", "rcnv1p", netns=hp, peer_netns=hp)
    with pytest.raises(KernelError, match="not a bridge"):
        bridge.ensure_bridge("rcnv1", netns=hp)
    links.set_master("rcnv1", "rcnbr0", hp)
    bridge.set_bridge_port("rcnv1", hp, hairpin=True, isolated=True)
    links.set_promisc("rcnbr0", True, hp)
    port = links.get("rcnv1", hp)
    assert port.master == br.index and port.hairpin and port.isolated and port.slave_kind == "bridge"
    assert links.get("rcnbr0", hp).promisc
    links.set_master("rcnv1", None, hp)
    assert links.get("rcnv1", hp).master is None
    with pytest.raises(LinkNotFound):
        links.set_up("rcn-nothere", hp)


def test_bridge_created_once_under_concurrency(make_netns):
    _, hp = make_netns("rcn-h-")
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(bridge.ensure_bridge("rcnbr1", netns=hp)[1]))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1 and len(results) == 6


def test_macvlan_into_another_namespace_and_move_rename(two):
    hn, hp, cn, cp = two
    links.create_veth("rcnm0", "rcnm0p", netns=hp, peer_netns=hp)
    mv = links.create_macvlan("rcntmp1", "rcnm0", "private", netns=hp, target_netns=cp, mtu=1300)
    assert mv.kind == "macvlan" and mv.macvlan_mode == "private" and mv.mtu == 1300
    links.rename("rcntmp1", "eth0", cp)
    links.move("eth0", hp, netns=cp, new_name="rcnback")
    assert links.find("rcnback", hp) is not None and links.find("eth0", cp) is None
    with pytest.raises(KernelError):
        links.create_macvlan("rcnx", "rcnm0", "nonsense-mode", netns=hp)


def test_addresses_idempotent_and_dad_settles(two):
    hn, hp, cn, cp = two
    links.create_veth("rcna0", "rcna1", netns=cp, peer_netns=cp)
    assert addrs.add("rcna0", "10.61.0.2/24", cp) is True
    assert addrs.add("rcna0", "10.61.0.2/24", cp) is False
    assert addrs.add("rcna0", "fd00:61::2/64", cp) is True
    links.set_up("rcna1", cp)
    links.set_up("rcna0", cp)
    addrs.settle("rcna0", cp)
    found = {a.address for a in addrs.list_addrs(cp, "rcna0") if a.is_global}
    assert found == {ipaddress.ip_interface("10.61.0.2/24"), ipaddress.ip_interface("fd00:61::2/64")}
    assert not any(a.tentative for a in addrs.list_addrs(cp, "rcna0", family=6))
    shown = json.loads(subprocess.run(["ip", "-n", cn, "-j", "addr", "show", "dev", "rcna0"], capture_output=True,
                                      text=True, check=True).stdout)[0]["addr_info"]
    assert [a.get("broadcast") for a in shown if a["local"] == "10.61.0.2"] == ["10.61.0.255"]  # as `brd +` sets it
    assert addrs.delete("rcna0", "10.61.0.2/24", cp) is True
    assert addrs.delete("rcna0", "10.61.0.2/24", cp) is False
    assert addrs.delete("rcna0", "fd00:61::2/64", cp) is True
    assert addrs.delete("rcn-gone", "10.61.0.2/24", cp) is False
    left = subprocess.run(["ip", "-n", cn, "-j", "addr", "show", "dev", "rcna0"], capture_output=True, text=True,
                          check=True).stdout
    assert "10.61.0.2" not in left and "fd00:61::2" not in left and "fe80::" in left  # only those two went


def test_routes_tables_rules(two):
    hn, hp, cn, cp = two
    links.create_veth("rcnr0", "rcnr1", netns=cp, peer_netns=cp)
    addrs.add("rcnr0", "10.62.0.2/24", cp)
    links.set_up("rcnr1", cp)
    links.set_up("rcnr0", cp)
    assert routes.add("0.0.0.0/0", gateway="10.62.0.1", ifname="rcnr0", netns=cp) is True
    assert routes.add("0.0.0.0/0", gateway="10.62.0.1", ifname="rcnr0", netns=cp) is False
    assert routes.add("10.63.0.0/16", gateway="10.62.0.1", ifname="rcnr0", netns=cp, table=100, metric=50)
    assert routes.add("10.62.0.1/32", ifname="rcnr0", netns=cp, scope=routes.SCOPE_LINK, table=101)
    t100 = routes.list_routes(cp, table=100)
    assert [(str(r.dst), str(r.gateway), r.priority) for r in t100] == [("10.63.0.0/16", "10.62.0.1", 50)]
    assert routes.default_route_ifname(cp) == "rcnr0"
    assert routes.rule_add(100, src="10.62.0.2/32", priority=1000, netns=cp) is True
    assert routes.rule_add(100, src="10.62.0.2/32", priority=1000, netns=cp) is False
    assert any(r.table == 100 and str(r.src) == "10.62.0.2/32" for r in routes.list_rules(cp))
    assert routes.rule_del(100, src="10.62.0.2/32", priority=1000, netns=cp) is True
    assert routes.rule_del(100, src="10.62.0.2/32", priority=1000, netns=cp) is False
    assert routes.delete("10.63.0.0/16", table=100, netns=cp) is True
    assert routes.delete("10.63.0.0/16", table=100, netns=cp) is False
    run("ip", "-n", cn, "link", "del", "rcnr0")
    assert routes.default_route_ifname(cp) is None


# Route requests, as keyword arguments of routes.add / routes.delete: default and not, both
# families, gateway or device only, explicit scope, source, tables below and above 255, metrics.
ROUTE_CASES = [
    dict(dst="0.0.0.0/0", gateway="10.66.0.254", ifname="rcnrt0"),
    dict(dst="10.67.0.0/16", gateway="10.66.0.254"),
    dict(dst="10.68.0.0/24", ifname="rcnrt0"),
    dict(dst="10.66.0.9/32", ifname="rcnrt0", scope=routes.SCOPE_LINK, src="10.66.0.1"),
    dict(dst="10.69.0.0/16", gateway="10.66.0.254", ifname="rcnrt0", table=100, metric=50),
    dict(dst="10.70.0.0/16", gateway="10.66.0.254", table=1000, mtu=1400, advmss=1360),
    dict(dst="10.66.0.1/32", ifname="rcnrt0", scope=routes.SCOPE_HOST, table=101),
    dict(dst="::/0", gateway="fd00:66::fe", ifname="rcnrt0"),
    dict(dst="fd00:67::/64", gateway="fd00:66::fe", ifname="rcnrt0", table=100, metric=0),
    dict(dst="fd00:68::/64", ifname="rcnrt0", metric=300, mtu=1300),
]


def _pyroute2_route(command: str, netns: str, dst: str, gateway=None, ifname=None, table=None, scope=None,
                    metric=None, src=None, mtu=None, advmss=None, proto=None) -> None:
    """The same request through pyroute2 (how routes.add and routes.delete sent it before kernel.rtnl
    did; Go's netlink library, the reference plugins', fills the same defaults)."""
    net = ipaddress.ip_network(dst)
    spec = {"dst": str(net.network_address), "dst_len": net.prefixlen, "family": 2 if net.version == 4 else 10}
    optional = {"proto": proto, "gateway": gateway, "scope": scope, "priority": metric, "prefsrc": src,
                "oif": links.get(ifname, netns).index if ifname else None,
                "table": table if table not in (None, routes.TABLE_MAIN) else None}
    spec.update({key: value for key, value in optional.items() if value is not None})
    if mtu or advmss:
        spec["metrics"] = {key: value for key, value in (("RTAX_MTU", mtu), ("RTAX_ADVMSS", advmss)) if value}
    with nsmod.ipr(netns) as ipr:
        ipr.route(command, **spec)


def _route_tables(name: str) -> list[str]:
    return [run("ip", "-n", name, f"-{family}", "route", "show", "table", "all").stdout for family in (4, 6)]


def test_routes_match_pyroute2(make_netns):
    """routes.add / delete (raw rtnetlink, kernel.rtnl) leave the kernel exactly as pyroute2's requests do."""
    (ours, ours_path), (theirs, theirs_path) = make_netns(), make_netns()
    for name, path in ((ours, ours_path), (theirs, theirs_path)):
        run("ip", "-n", name, "link", "add", "rcnrt0", "type", "bridge")
        run("ip", "-n", name, "link", "set", "rcnrt0", "up")
        addrs.add("rcnrt0", "10.66.0.1/24", path)
        addrs.add("rcnrt0", "fd00:66::1/64", path, nodad=True)
    for case in ROUTE_CASES:
        assert routes.add(case["dst"], **{k: v for k, v in case.items() if k != "dst"}, netns=ours_path) is True
        _pyroute2_route("add", theirs_path, proto=routes.RTPROT_BOOT, **case)
        assert routes.add(case["dst"], **{k: v for k, v in case.items() if k != "dst"}, netns=ours_path) is False
    assert _route_tables(ours) == _route_tables(theirs)
    assert "10.70.0.0/16 via 10.66.0.254 dev rcnrt0 table 1000 mtu 1400 advmss 1360" in \
        _route_tables(ours)[0]
    replaced = dict(gateway="10.66.0.253", mtu=1280)
    assert routes.add("10.67.0.0/16", **replaced, netns=ours_path, replace=True) is True
    _pyroute2_route("replace", theirs_path, "10.67.0.0/16", proto=routes.RTPROT_BOOT, **replaced)
    assert _route_tables(ours) == _route_tables(theirs)
    for case in ROUTE_CASES[1:]:  # delete with what the callers pass: no source, MTU or advmss
        keys = {k: v for k, v in case.items() if k in ("gateway", "ifname", "table", "scope", "metric")}
        if case["dst"] == "10.67.0.0/16":
            keys["gateway"] = "10.66.0.253"
        assert routes.delete(case["dst"], **keys, netns=ours_path) is True, case
        assert routes.delete(case["dst"], **keys, netns=ours_path) is False, case
        _pyroute2_route("del", theirs_path, case["dst"], scope=keys.pop("scope", routes.SCOPE_NOWHERE), proto=0, **keys)
    assert _route_tables(ours) == _route_tables(theirs)
    assert "default via 10.66.0.254 dev rcnrt0" in _route_tables(ours)[0]
    with pytest.raises(LinkNotFound):
        routes.add("10.71.0.0/16", ifname="rcnnone", netns=ours_path)
    with pytest.raises(KernelError, match="route add 10.71.0.0/16 via 10.99.0.1"):
        routes.add("10.71.0.0/16", gateway="10.99.0.1", netns=ours_path)  # gateway not on link
    assert routes.delete("10.71.0.0/16", netns="/run/netns/rcn-none-such") is False


RULE_CASES = [
    dict(table=100, src="10.66.0.2/32", priority=1000),
    dict(table=101, src="fd00:66::2/128", family=6),  # no priority: 32000, as pyroute2 filled in
    dict(table=1000, dst="10.72.0.0/16", iifname="lo", oifname="rcnrt9", priority=1001),
    dict(table=102, src="10.73.0.0/24", dst="10.74.0.0/16", priority=1002),
]


def _pyroute2_rule(command: str, netns: str, table: int, priority=None, src=None, dst=None, iifname=None,
                   oifname=None, family: int = 4) -> None:
    """The same rule request through pyroute2 (how routes.rule_add / rule_del sent it before)."""
    spec = {"table": table, "family": 2 if family == 4 else 10, "action": "FR_ACT_TO_TBL"}
    if priority is not None:
        spec["priority"] = priority
    for key, value in (("src", src), ("dst", dst)):
        if value is not None:
            net = ipaddress.ip_network(value)
            spec.update({key: str(net.network_address), f"{key}_len": net.prefixlen,
                         "family": 2 if net.version == 4 else 10})
    spec.update({key: value for key, value in (("iifname", iifname), ("oifname", oifname)) if value})
    with nsmod.ipr(netns) as ipr:
        ipr.rule(command, **spec)


def _rule_tables(name: str) -> list[str]:
    return [run("ip", "-n", name, f"-{family}", "rule", "show").stdout for family in (4, 6)]


def test_rules_match_pyroute2(make_netns):
    """routes.rule_add / rule_del / list_rules (kernel.rtnl) against pyroute2's requests and `ip rule`."""
    (ours, ours_path), (theirs, theirs_path) = make_netns(), make_netns()
    for case in RULE_CASES:
        assert routes.rule_add(**case, netns=ours_path) is True
        assert routes.rule_add(**case, netns=ours_path) is False
        _pyroute2_rule("add", theirs_path, **case)
    assert _rule_tables(ours) == _rule_tables(theirs)
    found = {(r.family, r.priority, r.table, str(r.src) if r.src else None, str(r.dst) if r.dst else None,
              r.iifname, r.oifname) for family in (4, 6) for r in routes.list_rules(ours_path, family)}
    assert {(4, 1000, 100, "10.66.0.2/32", None, None, None), (6, 32000, 101, "fd00:66::2/128", None, None, None),
            (4, 1001, 1000, None, "10.72.0.0/16", "lo", "rcnrt9"),
            (4, 1002, 102, "10.73.0.0/24", "10.74.0.0/16", None, None),
            (4, None, 255, None, None, None, None), (4, 32766, 254, None, None, None, None)} <= found
    for case in RULE_CASES:
        assert routes.rule_del(**case, netns=ours_path) is True
        assert routes.rule_del(**case, netns=ours_path) is False
        _pyroute2_rule("del", theirs_path, **case)
    assert _rule_tables(ours) == _rule_tables(theirs)
    assert "lookup 100" not in _rule_tables(ours)[0] and "lookup main" in _rule_tables(ours)[0]


def _kind_data_seen(ns: str) -> set[tuple[str, bool]]:
    """Compare Link.info / slave_info of every link in `ns` whose kind kernel.rtnl decodes with
    pyroute2's decoding of the same message; (kind, port) of those compared."""
    from reconciler.kernel import rtnl

    seen = set()
    for link in links.list_links(ns):
        for port, table in ((False, rtnl.KIND_DATA), (True, rtnl.PORT_DATA)):
            kind = link.slave_kind if port else link.kind
            if kind not in table:
                continue
            ours = link.slave_info if port else link.info
            wanted = list(table[kind])
            fast = {n: ours.get(n) for n in wanted}
            assert link.linkinfo._decoded is None, link.name  # answered without pyroute2
            theirs = link.linkinfo._pyroute2("IFLA_INFO_SLAVE_DATA" if port else "IFLA_INFO_DATA")
            assert fast == {n: theirs.get(n) for n in wanted}, link.name
            assert dict(ours) == theirs  # any other name, and iteration: pyroute2's decoding
            seen.add((kind, port))
    return seen


def test_kind_data_decoded_as_pyroute2_does(make_netns):
    """Link.info / slave_info: the kinds' attributes decoded by kernel.rtnl (without pyroute2) equal
    pyroute2's decoding of the same messages; other names still come from pyroute2."""
    name, ns = make_netns()
    for i, mode in enumerate(links.MACVLAN_MODES):
        run("ip", "-n", name, "link", "add", f"rcnq{i}", "type", "veth", "peer", "name", f"rcnr{i}")
        links.create_macvlan(f"rcnmv{i}", f"rcnq{i}", mode, netns=ns)
    run("ip", "-n", name, "link", "add", "rcnkbr0", "type", "bridge")
    run("ip", "-n", name, "link", "set", "rcnr0", "master", "rcnkbr0")
    run("ip", "-n", name, "link", "set", "rcnr0", "type", "bridge_slave", "hairpin", "on", "isolated", "on")
    run("ip", "-n", name, "link", "set", "rcnr1", "master", "rcnkbr0")
    devices.create_tap("rcnkt0", ns, multi_queue=True, owner=0, group=0)
    devices.create_tap("rcnkt1", ns)
    assert _kind_data_seen(ns) == {("macvlan", False), ("bridge", False), ("bridge", True), ("tun", False)}
    by_name = {link.name: link for link in links.list_links(ns)}
    assert [by_name[f"rcnmv{i}"].macvlan_mode for i in range(5)] == list(links.MACVLAN_MODES)
    assert by_name["rcnr0"].hairpin and by_name["rcnr0"].isolated and not by_name["rcnr1"].hairpin
    assert by_name["rcnkt0"].info["IFLA_TUN_MULTI_QUEUE"] == 1 and by_name["rcnkt0"].info["IFLA_TUN_OWNER"] == 0
    assert by_name["rcnkt1"].info.get("IFLA_TUN_OWNER") is None  # not sent by the kernel: absent, no fallback
    assert by_name["rcnkt1"].linkinfo._decoded is None


@pytest.mark.kernelvm
def test_kind_data_of_the_vm_kinds(make_netns):
    """The same comparison for ipvlan (three modes), vlan, vrf and a VLAN-filtering bridge."""
    from tests.plugins.vm.kernelkinds import kind_unavailable

    for kind in ("ipvlan", "vlan", "vrf"):
        if reason := kind_unavailable(kind):
            pytest.skip(reason)
    name, ns = make_netns()
    for i, mode in enumerate(("l2", "l3", "l3s")):  # the mode is the parent's: one parent each
        run("ip", "-n", name, "link", "add", f"rcnq{i}", "type", "veth", "peer", "name", f"rcnr{i}")
        links.create_ipvlan(f"rcniv{i}", f"rcnq{i}", mode, netns=ns)
    links.create_vlan("rcnvl0", "rcnr0", 42, netns=ns)
    run("ip", "-n", name, "link", "add", "rcnvrf0", "type", "vrf", "table", "1042")
    run("ip", "-n", name, "link", "add", "rcnkbr0", "type", "bridge", "vlan_filtering", "1")
    assert _kind_data_seen(ns) == {("ipvlan", False), ("vlan", False), ("vrf", False), ("bridge", False)}
    by_name = {link.name: link for link in links.list_links(ns)}
    assert [by_name[f"rcniv{i}"].info["IFLA_IPVLAN_MODE"] for i in range(3)] == [0, 1, 2]
    assert by_name["rcnvl0"].info["IFLA_VLAN_ID"] == 42 and by_name["rcnvrf0"].info["IFLA_VRF_TABLE"] == 1042
    assert by_name["rcnkbr0"].info["IFLA_BR_VLAN_FILTERING"] == 1


def test_sysctl_inside_the_right_namespace(two):
    hn, hp, cn, cp = two
    before = sysctl.read("net.ipv4.ip_forward")
    # New namespaces inherit IPv4 settings from the host's (which `make run` may have turned on): start from 0.
    subprocess.run(["ip", "netns", "exec", hn, "sysctl", "-qw", "net.ipv4.ip_forward=0"], check=True)
    sysctl.enable_forwarding(True, True, cp)
    assert sysctl.read_many(["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"], cp) == {
        "net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "1"}
    assert sysctl.read("net.ipv4.ip_forward", hp) == "0"
    assert sysctl.read("net.ipv4.ip_forward") == before  # our own namespace untouched
    links.create_veth("rcn.s0", "rcns1", netns=cp, peer_netns=cp)
    assert sysctl.write(sysctl.key_for("net", "ipv4", "conf", "rcn.s0", "arp_notify"), 1, cp) == "0"
    assert sysctl.read("net/ipv4/conf/rcn.s0/arp_notify", cp) == "1"
    assert sysctl.read("net/ipv4/conf/nonexistent/arp_notify", cp) is None
    with pytest.raises(ValueError):
        sysctl.read("kernel.hostname", cp)


def test_snapshot_reads_everything_once(two):
    hn, hp, cn, cp = two
    links.create_veth("rcnsn0", "rcnsn1", netns=cp, peer_netns=cp)
    addrs.add("rcnsn0", "10.64.0.2/24", cp)
    links.set_up("rcnsn0", cp)
    links.set_up("rcnsn1", cp)
    routes.add("10.65.0.0/16", gateway="10.64.0.1", ifname="rcnsn0", netns=cp)
    snap = snapshot.snapshot(cp)
    assert snap.link("rcnsn0").kind == "veth" and snap.link_by_index(snap.link("rcnsn0").link).name == "rcnsn1"
    assert snap.has_address("rcnsn0", ipaddress.ip_interface("10.64.0.2/24"))
    assert any(str(r.dst) == "10.65.0.0/16" for r in snap.routes_of("rcnsn0"))
    assert snap.link("nothere") is None and snap.addrs_of("nothere") == []


def test_shared_snapshot_is_read_once_per_namespace(two):
    hn, hp, cn, cp = two
    with snapshot.shared():
        first = snapshot.snapshot(cp)
        links.create_veth("rcnsh0", "rcnsh1", netns=cp, peer_netns=cp)
        assert snapshot.snapshot(cp) is first and first.link("rcnsh0") is None
        assert snapshot.snapshot(hp) is not first
        snapshot.invalidate(cp)
        assert snapshot.snapshot(cp).link("rcnsh0") is not None
    assert snapshot.snapshot(cp) is not first


def test_tap_with_vnet_header_and_queues(make_netns):
    _, ns = make_netns()
    tap = devices.create_tap("rcntap0", ns, multi_queue=True, owner=0, group=0)
    assert tap.kind == "tun" and tap.info["IFLA_TUN_TYPE"] == 2
    assert tap.info["IFLA_TUN_VNET_HDR"] == 1 and tap.info["IFLA_TUN_MULTI_QUEUE"] == 1
    assert links.find("rcntap0") is None  # made in the target namespace, not ours
    assert links.delete("rcntap0", ns)


def test_a_firewall_only_block_does_not_share_snapshots(two):
    from reconciler.kernel.firewall import iptables

    hn, hp, cn, cp = two
    with iptables.shared_reads():
        first = snapshot.snapshot(cp)
        links.create_veth("rcnsf0", "rcnsf1", netns=cp, peer_netns=cp)
        assert snapshot.snapshot(cp) is not first and snapshot.snapshot(cp).link("rcnsf0") is not None
