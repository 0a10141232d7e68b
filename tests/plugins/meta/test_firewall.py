"""firewall plugin (iptables backend): rules, admin chain, CHECK/DEL/GC, traffic, reference diff.

Every test runs against both iptables (RECONCILER_IPTABLES): the legacy tables and the iptables-nft
ones (this host's `iptables` command, and where the reference writes)."""

from __future__ import annotations

import os
import re

import pytest

from tests.cnitest import exec_plugin
from tests.firewall.env import REF, World, run_plugin, sh

PREV = {"cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "10.250.0.5/24", "gateway": "10.250.0.1", "interface": 0},
                {"address": "fd00:250::5/64", "interface": 0}]}


@pytest.fixture(params=["legacy", "nft"], autouse=True)
def xt(request, monkeypatch) -> str:
    monkeypatch.setenv("RECONCILER_IPTABLES", request.param)
    return request.param


def conf(prev=PREV, **extra):
    c = {"cniVersion": "1.0.0", "name": "rcnfw", "type": "firewall", "backend": "iptables", "prevResult": prev}
    c.update(extra)
    return c


def filter_lines(ns: str, family: int = 4, tool: str | None = None) -> list[str]:
    """The filter table's chains and rules as `ip[6]tables-<tool>-save` prints them (tool: the test's)."""
    tool = tool or os.environ["RECONCILER_IPTABLES"]
    save = f"ip{'' if family == 4 else '6'}tables-{tool}-save"
    out = sh(ns, save, "-t", "filter", check=False)
    return [line.split(" [")[0] if line.startswith(":") else line
            for line in out.splitlines() if line.startswith((":", "-A"))]


def call(plugin_dir, cmd: str, config: dict, hostns: str, cid: str = "ctr1", binary=None):
    return exec_plugin(binary or plugin_dir / "firewall", cmd, config, netns="/run/netns/" + hostns,
                       container_id=cid, cni_path=REF, netns_exec=hostns)


def test_add_check_del_keeps_admin_chain(host_netns, plugin_dir, xt) -> None:
    host = host_netns[0]
    for _ in range(2):  # ADD twice: no duplicates
        run = call(plugin_dir, "ADD", conf(), host)
        assert run.code == 0, run.stdout + run.stderr
        assert run.json["ips"] == PREV["ips"]
    lines = filter_lines(host)
    cmt = '-m comment --comment "name: \\"rcnfw\\" id: \\"ctr1\\""'
    assert lines.count('-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD') == 1
    assert '-A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN' in lines
    assert (f"-A CNI-FORWARD -d 10.250.0.5/32 -m conntrack --ctstate RELATED,ESTABLISHED {cmt} -j ACCEPT"
            in lines)
    assert lines.count(f"-A CNI-FORWARD -s 10.250.0.5/32 {cmt} -j ACCEPT") == 1
    assert f"-A CNI-FORWARD -s fd00:250::5/128 {cmt} -j ACCEPT" in filter_lines(host, 6)
    assert call(plugin_dir, "CHECK", conf(), host).code == 0
    # the operator's own rule in the admin chain
    sh(host, f"iptables-{xt}", "-A", "CNI-ADMIN", "-s", "10.99.0.0/16", "-j", "DROP")
    for _ in range(2):  # DEL twice
        assert call(plugin_dir, "DEL", conf(), host).code == 0
    lines = filter_lines(host)
    assert "-A CNI-ADMIN -s 10.99.0.0/16 -j DROP" in lines
    assert not [line for line in lines if "10.250.0.5" in line]
    assert not [line for line in filter_lines(host, 6) if "fd00:250::5" in line]
    run = call(plugin_dir, "CHECK", conf(), host)
    assert run.code != 0 and "10.250.0.5" in run.json["msg"]


def test_custom_admin_chain_and_drift(host_netns, plugin_dir, xt) -> None:
    host = host_netns[0]
    c = conf(iptablesAdminChainName="RCN-ADMIN")
    assert call(plugin_dir, "ADD", c, host).code == 0
    assert ":RCN-ADMIN -" in filter_lines(host)
    sh(host, f"iptables-{xt}", "-F", "FORWARD")
    run = call(plugin_dir, "CHECK", c, host)
    assert run.code != 0 and "FORWARD" in run.json["msg"]
    assert call(plugin_dir, "ADD", c, host).code == 0
    assert call(plugin_dir, "CHECK", c, host).code == 0


def test_gc_removes_only_invalid(host_netns, plugin_dir) -> None:
    host = host_netns[0]
    other = {**PREV, "ips": [{"address": "10.250.0.6/24"}]}
    assert call(plugin_dir, "ADD", conf(), host, cid="keep").code == 0
    assert call(plugin_dir, "ADD", conf(prev=other), host, cid="gone").code == 0
    gc = {"cniVersion": "1.1.0", "name": "rcnfw", "type": "firewall",
          "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    assert call(plugin_dir, "GC", gc, host, cid="").code == 0
    text = "\n".join(filter_lines(host))
    assert "10.250.0.5" in text and "10.250.0.6" not in text


@pytest.mark.parametrize(("extra", "field"), [({"ingressPolicy": "closed"}, "ingressPolicy"),
                                              ({"backend": "firewalld"}, "backend"),
                                              ({"iptablesAdminChainName": "bad name!"}, "iptablesAdminChainName")])
def test_bad_config(host_netns, plugin_dir, extra, field) -> None:
    host = host_netns[0]
    run = call(plugin_dir, "ADD", conf(**extra), host)
    assert run.json["code"] == 7 and field in run.json["msg"]
    assert not [line for line in filter_lines(host) if "CNI-" in line]


def test_missing_prev_result(host_netns, plugin_dir) -> None:
    c = conf()
    del c["prevResult"]
    run = call(plugin_dir, "ADD", c, host_netns[0])
    assert run.json["code"] == 7 and "prevResult" in run.json["msg"]


def test_same_rules_as_reference(make_netns, plugin_dir, reference_plugins) -> None:
    ref_host, _ = make_netns("rcn-h-")
    our_host, _ = make_netns("rcn-h-")
    assert call(plugin_dir, "ADD", conf(), ref_host, binary=REF / "firewall").code == 0
    assert call(plugin_dir, "ADD", conf(), our_host).code == 0
    strip = re.compile(r' -m comment --comment "name: \\"rcnfw\\" id: \\"ctr1\\""')
    for family in (4, 6):
        ours = [strip.sub("", line) for line in filter_lines(our_host, family)]
        assert ours == filter_lines(ref_host, family, tool="nft")
    # DEL by ours also removes rules the reference made (uncommented form) if they are in legacy tables
    assert call(plugin_dir, "DEL", conf(), our_host).code == 0
    assert call(plugin_dir, "DEL", conf(), ref_host, binary=REF / "firewall").code == 0
    assert not [line for line in filter_lines(ref_host, tool="nft") if "10.250.0.5" in line]


def test_forwarding_follows_the_rules(make_netns, tmp_path, plugin_dir, reference_plugins, xt) -> None:
    world = World(make_netns, tmp_path)
    try:
        srv, srv_path, prev = world.container("srv1")
        world.serve(srv, 80, "fw-ok")
        client, _ = world.outside_client()
        ip = prev["ips"][0]["address"].split("/")[0]
        sh(world.host, f"iptables-{xt}", "-P", "FORWARD", "DROP")
        assert world.connect(client, ip, 80).startswith("ERR")
        c = {"cniVersion": "1.0.0", "name": world.name, "type": "firewall", "prevResult": prev}
        assert run_plugin(plugin_dir / "firewall", "ADD", c, world, "srv1", srv_path).code == 0
        # replies to the client are RELATED/ESTABLISHED; the client's own SYN needs -d IP... so allow it
        # through the admin chain the way an operator would
        sh(world.host, f"iptables-{xt}", "-A", "CNI-ADMIN", "-d", ip, "-p", "tcp", "--dport", "80", "-j", "ACCEPT")
        assert world.connect(client, ip, 80) == "fw-ok"
        assert run_plugin(plugin_dir / "firewall", "DEL", c, world, "srv1", srv_path).code == 0
        sh(world.host, f"iptables-{xt}", "-F", "CNI-ADMIN")
        assert world.connect(client, ip, 80).startswith("ERR")
    finally:
        world.close()


@pytest.mark.parametrize("policy", ["same-bridge", "isolated"])
def test_ingress_policy_isolates_bridges(make_netns, tmp_path, plugin_dir, reference_plugins, policy) -> None:
    net_a = World(make_netns, tmp_path / "a", subnet="10.250.0.0/24", name="rcnfwa")
    net_b = World(make_netns, tmp_path / "b", subnet="10.252.0.0/24", name="rcnfwb", host=net_a.host)
    try:
        a1, a1_path, prev_a1 = net_a.container("a1")
        a2, a2_path, prev_a2 = net_a.container("a2")
        b1, b1_path, prev_b1 = net_b.container("b1")
        client, _ = net_a.outside_client()
        for ns in (a2, b1, client):
            net_a.serve(ns, 80, f"hello-{ns[:6]}")
        ip = {name: prev["ips"][0]["address"].split("/")[0] for name, prev in
              (("a2", prev_a2), ("b1", prev_b1))}
        assert net_a.connect(a1, ip["b1"], 80).startswith("hello")  # open: networks reach each other
        for world, cid, path, prev in ((net_a, "a1", a1_path, prev_a1), (net_a, "a2", a2_path, prev_a2),
                                       (net_b, "b1", b1_path, prev_b1)):
            c = {"cniVersion": "1.0.0", "name": world.name, "type": "firewall", "ingressPolicy": policy,
                 "prevResult": prev}
            run = run_plugin(plugin_dir / "firewall", "ADD", c, world, cid, path)
            assert run.code == 0, run.stdout + run.stderr
            assert run_plugin(plugin_dir / "firewall", "CHECK", c, world, cid, path).code == 0
        assert net_a.connect(a1, ip["b1"], 80).startswith("ERR")  # other bridge: dropped
        assert net_a.connect(a1, "10.251.0.2", 80).startswith("hello")  # outside: still reachable
        same = net_a.connect(a1, ip["a2"], 80)  # same bridge: bridged, unless br_netfilter is loaded
        if policy == "same-bridge":
            assert same.startswith("hello")
        lines = filter_lines(net_a.host)
        assert lines.index(f'-A FORWARD -m comment --comment "CNI firewall plugin rules (ingressPolicy: {policy})"'
                           " -j CNI-ISOLATION-STAGE-1") < lines.index(
            '-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD')
    finally:
        net_a.close()
        net_b.close()


def test_default_follows_the_hosts_iptables_command(host_netns, plugin_dir, monkeypatch) -> None:
    """Without the override the rules land where this host's `iptables` reads them (where the
    reference puts its own and where an operator's `iptables -A CNI-ADMIN` goes); DEL takes them away."""
    monkeypatch.delenv("RECONCILER_IPTABLES")
    host = host_netns[0]
    assert call(plugin_dir, "ADD", conf(), host).code == 0
    assert "-A CNI-FORWARD -s 10.250.0.5/32" in sh(host, "iptables-save", "-t", "filter")
    assert call(plugin_dir, "CHECK", conf(), host).code == 0
    assert call(plugin_dir, "DEL", conf(), host).code == 0
    assert "10.250.0.5" not in sh(host, "iptables-save", "-t", "filter")
