"""portmap: real traffic through host ports, idempotence, CHECK, GC, bad inputs, both backends.

All host-side work runs inside a namespace standing in for the host (`World.host`); the
container side comes from the reference bridge + host-local.
"""

from __future__ import annotations

import pytest

from reconciler.kernel.firewall.portmap import dn_chain
from tests.firewall.env import World, nat_lines, portmap_conf, run_plugin, sh

pytestmark = pytest.mark.usefixtures("reference_plugins")


@pytest.fixture
def world(make_netns, tmp_path):
    w = World(make_netns, tmp_path)
    yield w
    w.close()


def ours(host: str) -> list[str]:
    """Every nat rule or chain line that belongs to portmap (legacy tables) or our nft tables."""
    lines = [line for line in nat_lines(host) if "CNI-" in line]
    tables = sh(host, "nft", "list", "tables", check=False)
    return lines + [t for t in tables.splitlines() if "cni_hostport" in t]


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_traffic_hairpin_localhost_and_del(world: World, plugin_dir, backend: str) -> None:
    srv, srv_path, prev = world.container("srv1")
    world.serve(srv, 80, "hello-srv1")
    client, host_ip = world.outside_client()
    conf = portmap_conf(world.name, prev, [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                        backend=backend)
    run = run_plugin(plugin_dir / "portmap", "ADD", conf, world, "srv1", srv_path)
    assert run.code == 0, run.stdout + run.stderr
    assert run.json["ips"] == prev["ips"]  # prevResult passes through
    assert run_plugin(plugin_dir / "portmap", "ADD", conf, world, "srv1", srv_path).code == 0  # ADD twice
    assert run_plugin(plugin_dir / "portmap", "CHECK", conf, world, "srv1", srv_path).code == 0

    assert world.connect(client, host_ip, 8080) == "hello-srv1"  # outside -> host port -> container
    gateway = prev["ips"][0]["gateway"]
    assert world.connect(srv, gateway, 8080) == "hello-srv1"  # hairpin: the container reaches itself
    assert world.connect(world.host, "127.0.0.1", 8080) == "hello-srv1"  # localhost on the host
    assert sh(world.host, "sysctl", "-n", f"net.ipv4.conf.{world.bridge}.route_localnet").strip() == "1"

    for _ in range(2):  # DEL twice
        run = run_plugin(plugin_dir / "portmap", "DEL", conf, world, "srv1", srv_path)
        assert run.code == 0, run.stdout + run.stderr
    assert world.connect(client, host_ip, 8080).startswith("ERR")
    leftover = [line for line in ours(world.host) if dn_chain(world.name, "srv1") in line]
    assert not leftover
    if backend == "nftables":
        assert '"srv1"' not in sh(world.host, "nft", "list", "ruleset")


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_a_neighbour_reaches_the_mapped_port_through_the_host(world: World, plugin_dir, backend: str) -> None:
    """Container b -> bridge address:hostPort -> container a on the same bridge. The reply must come
    back through the host to be un-NATed: masqueraded for the whole subnet, as the reference's
    iptables hairpin rule does. Without br_netfilter's call into the firewall (as here) a reply
    bridged straight to b would carry a's address and be dropped."""
    sh(world.host, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0", check=False)
    srv, srv_path, prev = world.container("srv1")
    peer, _, _ = world.container("peer1")
    world.serve(srv, 80, "hello-srv1")
    conf = portmap_conf(world.name, prev, [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                        backend=backend)
    assert run_plugin(plugin_dir / "portmap", "ADD", conf, world, "srv1", srv_path).code == 0
    assert world.connect(peer, prev["ips"][0]["gateway"], 8080) == "hello-srv1"
    assert run_plugin(plugin_dir / "portmap", "CHECK", conf, world, "srv1", srv_path).code == 0
    assert run_plugin(plugin_dir / "portmap", "DEL", conf, world, "srv1", srv_path).code == 0


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_dual_stack_traffic(make_netns, tmp_path, plugin_dir, backend: str) -> None:
    world = World(make_netns, tmp_path, subnet6="fd00:250::/64")
    try:
        srv, srv_path, prev = world.container("srv6")
        world.serve(srv, 80, "hello-v6", family6=True)
        client, host_ip = world.outside_client()
        conf = portmap_conf(world.name, prev, [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                            backend=backend)
        run = run_plugin(plugin_dir / "portmap", "ADD", conf, world, "srv6", srv_path)
        assert run.code == 0, run.stdout + run.stderr
        assert run_plugin(plugin_dir / "portmap", "CHECK", conf, world, "srv6", srv_path).code == 0
        assert world.connect(client, host_ip, 8080) == "hello-v6"
        assert world.connect(client, "fd00:251::1", 8080) == "hello-v6"
        gw6 = next(ip["gateway"] for ip in prev["ips"] if ":" in ip["address"])
        assert world.connect(srv, gw6, 8080) == "hello-v6"  # IPv6 hairpin
        assert run_plugin(plugin_dir / "portmap", "DEL", conf, world, "srv6", srv_path).code == 0
        assert world.connect(client, "fd00:251::1", 8080).startswith("ERR")
        assert not [line for line in nat_lines(world.host, "ip6tables-legacy-save") if "CNI-DN-" in line]
    finally:
        world.close()


def test_two_containers_udp_and_gc(world: World, plugin_dir) -> None:
    a, a_path, prev_a = world.container("ctra")
    b, b_path, prev_b = world.container("ctrb")
    world.serve(a, 53, "udp-a", proto="udp")
    world.serve(b, 80, "tcp-b")
    client, host_ip = world.outside_client()
    conf_a = portmap_conf(world.name, prev_a, [{"hostPort": 5353, "containerPort": 53, "protocol": "udp"}],
                          backend="iptables")
    conf_b = portmap_conf(world.name, prev_b, [{"hostPort": 8081, "containerPort": 80, "protocol": "TCP",
                                                "hostIP": "10.251.0.1"}], backend="iptables")
    for conf, cid, path in ((conf_a, "ctra", a_path), (conf_b, "ctrb", b_path)):
        run = run_plugin(plugin_dir / "portmap", "ADD", conf, world, cid, path)
        assert run.code == 0, run.stdout + run.stderr
    assert world.connect(client, host_ip, 5353, proto="udp") == "udp-a"
    assert world.connect(client, host_ip, 8081) == "tcp-b"
    # GC with only ctra valid removes ctrb's chain and keeps ctra's
    gc_conf = {"cniVersion": "1.1.0", "name": world.name, "type": "portmap",
               "cni.dev/valid-attachments": [{"containerID": "ctra", "ifname": "eth0"}]}
    run = run_plugin(plugin_dir / "portmap", "GC", gc_conf, world, "", "")
    assert run.code == 0, run.stdout + run.stderr
    text = "\n".join(nat_lines(world.host))
    assert dn_chain(world.name, "ctra") in text and dn_chain(world.name, "ctrb") not in text
    assert world.connect(client, host_ip, 5353, proto="udp") == "udp-a"
    assert world.connect(client, host_ip, 8081).startswith("ERR")


def test_check_finds_drift_and_foreign_rules_survive(world: World, plugin_dir) -> None:
    sh(world.host, "iptables-legacy", "-t", "nat", "-N", "RCN-FOREIGN")
    sh(world.host, "iptables-legacy", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "9999", "-j",
       "RCN-FOREIGN")
    sh(world.host, "iptables-legacy", "-t", "nat", "-A", "RCN-FOREIGN", "-j", "RETURN")
    srv, srv_path, prev = world.container("srv1")
    conf = portmap_conf(world.name, prev, [{"hostPort": 8080, "containerPort": 80}], backend="iptables")
    assert run_plugin(plugin_dir / "portmap", "ADD", conf, world, "srv1", srv_path).code == 0
    chain = dn_chain(world.name, "srv1")
    ip = prev["ips"][0]["address"].split("/")[0]
    sh(world.host, "iptables-legacy", "-t", "nat", "-D", chain, "-p", "tcp", "-m", "tcp", "--dport", "8080",
       "-j", "DNAT", "--to-destination", f"{ip}:80")
    run = run_plugin(plugin_dir / "portmap", "CHECK", conf, world, "srv1", srv_path)
    assert run.code != 0 and "DNAT" in run.json["msg"] + run.json.get("details", "")
    assert run_plugin(plugin_dir / "portmap", "ADD", conf, world, "srv1", srv_path).code == 0  # repairs
    assert run_plugin(plugin_dir / "portmap", "CHECK", conf, world, "srv1", srv_path).code == 0
    assert run_plugin(plugin_dir / "portmap", "DEL", conf, world, "srv1", srv_path).code == 0
    lines = nat_lines(world.host)
    assert "-A PREROUTING -p tcp -m tcp --dport 9999 -j RCN-FOREIGN" in lines
    assert "-A RCN-FOREIGN -j RETURN" in lines


@pytest.mark.parametrize(
    ("mapping", "needle"),
    [
        ({"hostPort": 0, "containerPort": 80}, "hostPort"),
        ({"hostPort": 70000, "containerPort": 80}, "hostPort"),
        ({"hostPort": 8080, "containerPort": 0}, "containerPort"),
        ({"hostPort": 8080, "containerPort": 80, "protocol": "icmp"}, "protocol"),
        ({"hostPort": 8080, "containerPort": 80, "hostIP": "not-an-ip"}, "hostIP"),
    ],
)
def test_bad_mappings_are_rejected_and_nothing_written(world: World, plugin_dir, mapping, needle) -> None:
    srv, srv_path, prev = world.container("srv1")
    conf = portmap_conf(world.name, prev, [mapping], backend="iptables")
    run = run_plugin(plugin_dir / "portmap", "ADD", conf, world, "srv1", srv_path)
    assert run.code != 0 and run.json["code"] == 7, run.stdout
    assert needle in run.json["msg"]
    assert not ours(world.host)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"markMasqBit": 32}, "markMasqBit"),
        ({"markMasqBit": 3, "externalSetMarkChain": "KUBE-MARK-MASQ"}, "externalSetMarkChain"),
        ({"backend": "ebtables"}, "backend"),
    ],
)
def test_bad_options(world: World, plugin_dir, extra, needle) -> None:
    srv, srv_path, prev = world.container("srv1")
    conf = portmap_conf(world.name, prev, [{"hostPort": 8080, "containerPort": 80}], **extra)
    run = run_plugin(plugin_dir / "portmap", "ADD", conf, world, "srv1", srv_path)
    assert run.json["code"] == 7 and needle in run.json["msg"], run.stdout
    assert not ours(world.host)


def test_no_address_on_the_interface_passes_the_result_through(world: World, plugin_dir) -> None:
    """As the reference: a prevResult without an IP on CNI_IFNAME (a bridge without IPAM) maps nothing."""
    srv, srv_path, prev = world.container("srv1")
    bare = {**prev, "ips": []}
    conf = portmap_conf(world.name, bare, [{"hostPort": 8080, "containerPort": 80}])
    for verb in ("ADD", "CHECK", "DEL"):
        run = run_plugin(plugin_dir / "portmap", verb, conf, world, "srv1", srv_path)
        assert run.code == 0, (verb, run.stdout, run.stderr)
        if verb == "ADD":
            assert run.json.get("ips", []) == [] and run.json["interfaces"] == bare["interfaces"], run.json
            assert "no ports mapped" in run.stderr
        assert not ours(world.host)


def test_bad_conditions_roll_back(world: World, plugin_dir) -> None:
    srv, srv_path, prev = world.container("srv1")
    conf = portmap_conf(world.name, prev, [{"hostPort": 8080, "containerPort": 80}], backend="iptables",
                        conditionsV4=["-m", "nosuchmatch", "--foo", "1"])
    run = run_plugin(plugin_dir / "portmap", "ADD", conf, world, "srv1", srv_path)
    assert run.code != 0
    assert not [line for line in nat_lines(world.host) if "CNI-DN-" in line]


def test_udp_conntrack_flushed_on_add(world: World, plugin_dir) -> None:
    srv, srv_path, prev = world.container("srv1")
    world.serve(srv, 53, "udp-srv", proto="udp")
    client, host_ip = world.outside_client()
    # a conntrack-using rule makes the namespace track connections (as any real host firewall does);
    # traffic before the mapping exists then leaves an entry towards the host itself
    sh(world.host, "iptables-legacy", "-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")
    assert world.connect(client, host_ip, 5300, proto="udp").startswith("ERR")
    assert "dport=5300" in sh(world.host, "conntrack", "-L", "-p", "udp", check=False)
    conf = portmap_conf(world.name, prev, [{"hostPort": 5300, "containerPort": 53, "protocol": "udp"}],
                        backend="iptables")
    assert run_plugin(plugin_dir / "portmap", "ADD", conf, world, "srv1", srv_path).code == 0
    assert "dport=5300" not in sh(world.host, "conntrack", "-L", "-p", "udp", check=False)
    assert world.connect(client, host_ip, 5300, proto="udp") == "udp-srv"
    assert run_plugin(plugin_dir / "portmap", "DEL", conf, world, "srv1", srv_path).code == 0
    assert "dport=5300" not in sh(world.host, "conntrack", "-L", "-p", "udp", check=False)


def test_conditions_pick_their_backend(world: World, plugin_dir) -> None:
    srv, srv_path, prev = world.container("srv1")
    world.serve(srv, 80, "cond-ok")
    client, host_ip = world.outside_client()
    conf = portmap_conf(world.name, prev, [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                        conditionsV4=["ip", "saddr", "!=", "10.99.0.0/16"])  # nft syntax, no backend given
    assert run_plugin(plugin_dir / "portmap", "ADD", conf, world, "srv1", srv_path).code == 0
    assert "ip saddr != 10.99.0.0/16 fib daddr type local" in sh(world.host, "nft", "list", "table", "ip",
                                                                  "cni_hostport")
    assert world.connect(client, host_ip, 8080) == "cond-ok"
    assert run_plugin(plugin_dir / "portmap", "DEL", conf, world, "srv1", srv_path).code == 0
