"""dhcp IPAM against a real DHCP server: leases, traffic, release, renewal, rebinding, restarts."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest

from tests.cnitest import exec_plugin
from tests.conftest import run
from tests.plugins.dhcp.conftest import (
    SERVER_IP,
    configure,
    daemon_request,
    dhcp_exec,
    lease_of,
    netconf,
    ping,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)


def test_add_ping_check_release(lan, dnsmasq, dhcp_daemon, plugin_dir):
    server = dnsmasq("--dhcp-option=121,10.99.0.0/16,10.77.0.1,0.0.0.0/0,10.77.0.1")
    daemon = dhcp_daemon()
    assert stat.S_IMODE(os.stat(daemon.socket_path).st_mode) == 0o600
    ctr, path = lan.container()
    conf = netconf(daemon.socket_path, provide=[{"option": "host-name", "value": "rcn-web"}], priority=7)

    started = time.monotonic()
    res = dhcp_exec(plugin_dir, "ADD", conf, path)
    add_seconds = time.monotonic() - started
    assert res.code == 0, res.stdout + res.stderr
    result = res.json
    address = result["ips"][0]["address"]
    ip = address.split("/")[0]
    assert address.endswith("/24") and ip.startswith("10.77.0.")
    assert result["ips"][0]["gateway"] == SERVER_IP
    assert {"dst": "10.99.0.0/16", "gw": SERVER_IP, "priority": 7} in result["routes"]
    assert {"dst": "0.0.0.0/0", "gw": SERVER_IP, "priority": 7} in result["routes"]
    print(f"ADD latency: {add_seconds:.2f}s")

    line = wait_for(lambda: lease_of(server, "ctr1"), 10, "the lease in dnsmasq's lease file")
    assert line[2] == ip and line[3] == "rcn-web"

    # The container uses the address (the main plugin's job; done by hand here) and reaches the server.
    run("ip", "-n", ctr, "addr", "add", address, "dev", "eth0")
    run("ip", "-n", ctr, "link", "set", "eth0", "up")
    assert ping(ctr, SERVER_IP)

    assert dhcp_exec(plugin_dir, "CHECK", dict(conf, prevResult=result), path).code == 0
    again = dhcp_exec(plugin_dir, "ADD", conf, path)  # the same attachment again: the same lease
    assert again.code == 0 and again.json["ips"][0]["address"] == address

    assert dhcp_exec(plugin_dir, "DEL", conf, path).code == 0
    wait_for(lambda: lease_of(server, "ctr1") is None, 20, "dnsmasq to drop the released lease")
    assert server.count("DHCPRELEASE", ip) == 1
    assert dhcp_exec(plugin_dir, "DEL", conf, path).code == 0  # DEL twice
    gone = dhcp_exec(plugin_dir, "CHECK", dict(conf, prevResult=result), path)
    assert gone.code != 0 and "no lease held" in gone.json["msg"]


def test_reference_macvlan_delegates_to_our_dhcp(lan, dnsmasq, dhcp_daemon, plugin_dir, reference_plugins):
    server = dnsmasq()
    daemon = dhcp_daemon()
    ctr, path = lan.container()
    run("ip", "-n", ctr, "link", "delete", "eth0")  # the reference macvlan makes its own
    conf = netconf(daemon.socket_path)
    ref = reference_plugins / "macvlan"
    res = exec_plugin(
        ref,
        "ADD",
        conf,
        netns=path,
        cni_path=f"{plugin_dir}:{reference_plugins}",
        netns_exec=lan.host_ns,
        container_id="ctr2",
    )
    assert res.code == 0, res.stdout + res.stderr
    ip = res.json["ips"][0]["address"].split("/")[0]
    assert ping(ctr, SERVER_IP)
    assert lease_of(server, "ctr2")[2] == ip
    res = exec_plugin(
        ref,
        "DEL",
        conf,
        netns=path,
        cni_path=f"{plugin_dir}:{reference_plugins}",
        netns_exec=lan.host_ns,
        container_id="ctr2",
    )
    assert res.code == 0, res.stdout + res.stderr
    wait_for(lambda: lease_of(server, "ctr2") is None, 20, "the release")


def test_renews_at_t1(lan, dnsmasq, dhcp_daemon, plugin_dir):
    server = dnsmasq("--dhcp-option=option:T1,3", "--dhcp-option=option:T2,6")
    daemon = dhcp_daemon()
    ctr, path = lan.container()
    conf = netconf(daemon.socket_path)
    res = dhcp_exec(plugin_dir, "ADD", conf, path)
    assert res.code == 0, res.stdout + res.stderr
    configure(ctr, res.json)
    ip = res.json["ips"][0]["address"].split("/")[0]
    acks = server.count("DHCPACK", ip)
    # Renewals: unicast DHCPREQUESTs for the held address, ACKed by the server and received by the client.
    wait_for(lambda: daemon.log.read_text().count("lease renewed") >= 2, 30, "two renewals")
    assert server.count("DHCPACK", ip) >= acks + 2
    assert "lease rebound" not in daemon.log.read_text()
    assert dhcp_exec(plugin_dir, "CHECK", dict(conf, prevResult=res.json), path).code == 0
    assert dhcp_exec(plugin_dir, "DEL", conf, path).code == 0


def test_daemon_restart_keeps_address(lan, dnsmasq, dhcp_daemon, plugin_dir):
    server = dnsmasq("--dhcp-option=option:T1,4", "--dhcp-option=option:T2,8")
    first = dhcp_daemon(via="cli")
    ctr, path = lan.container()
    conf = netconf(first.socket_path)
    res = dhcp_exec(plugin_dir, "ADD", conf, path)
    assert res.code == 0, res.stdout + res.stderr
    configure(ctr, res.json)
    ip = res.json["ips"][0]["address"].split("/")[0]

    first.stop(signal.SIGKILL)  # a crash: the socket file stays behind
    assert os.path.exists(first.socket_path)
    requests = server.count("DHCPREQUEST", ip)
    second = dhcp_daemon(via="plugin")  # replaces the stale socket, resumes from the lease store
    wait_for(
        lambda: server.count("DHCPACK", ip) > requests and server.count("DHCPREQUEST", ip) > requests,
        30,
        "the resumed lease to be confirmed by the server",
    )
    wait_for(lambda: "lease renewed" in second.log.read_text(), 30, "renewals to resume after the restart")
    wait_for(
        lambda: dhcp_exec(plugin_dir, "CHECK", dict(conf, prevResult=res.json), path).code == 0,
        20,
        "CHECK to pass after the restart",
    )
    again = dhcp_exec(plugin_dir, "ADD", conf, path)
    assert again.code == 0 and again.json["ips"][0]["address"] == res.json["ips"][0]["address"]
    assert server.count("DHCPDISCOVER") == 1  # never had to start over
    assert dhcp_exec(plugin_dir, "DEL", conf, path).code == 0
    assert second.stop() == 0
    assert not os.path.exists(second.socket_path)


def test_lost_lease_is_reported(lan, dnsmasq, dhcp_daemon, plugin_dir):
    first = dnsmasq("--dhcp-option=option:T1,3", "--dhcp-option=option:T2,6")
    daemon = dhcp_daemon()
    _, path = lan.container()
    conf = netconf(daemon.socket_path)
    res = dhcp_exec(plugin_dir, "ADD", conf, path)
    assert res.code == 0, res.stdout + res.stderr
    first.stop()
    # A new authoritative server that does not know the lease: it NAKs the renewal.
    second = dnsmasq("--dhcp-option=option:T1,3", "--dhcp-option=option:T2,6", pool="10.77.0.200,10.77.0.250")
    wait_for(lambda: second.count("DHCPNAK") >= 1, 30, "the new server to refuse the renewal")
    wait_for(lambda: "lease lost" in daemon.log.read_text(), 20, "the loss in the daemon's log")

    def check_fails() -> bool:
        out = dhcp_exec(plugin_dir, "CHECK", dict(conf, prevResult=res.json), path)
        return out.code != 0 and ("lost" in out.json["msg"] or "not " in out.json["msg"])

    wait_for(check_fails, 20, "CHECK to report the lost lease")
    assert dhcp_exec(plugin_dir, "DEL", conf, path).code == 0


def test_restarted_container_gets_its_address_back(lan, dnsmasq, dhcp_daemon, plugin_dir):
    """Same container ID in a new netns, without a DEL in between: the same address (INIT-REBOOT)."""
    server = dnsmasq()
    daemon = dhcp_daemon()
    old_ns, old_path = lan.container()
    conf = netconf(daemon.socket_path)
    first = dhcp_exec(plugin_dir, "ADD", conf, old_path)
    assert first.code == 0, first.stdout + first.stderr
    run("ip", "netns", "delete", old_ns)
    lan.containers.remove(old_ns)
    _, new_path = lan.container()
    second = dhcp_exec(plugin_dir, "ADD", conf, new_path)
    assert second.code == 0, second.stdout + second.stderr
    assert second.json["ips"] == first.json["ips"]
    assert server.count("DHCPDISCOVER") == 1
    assert dhcp_exec(plugin_dir, "DEL", conf, new_path).code == 0


def test_parallel_containers_and_gc(lan, dnsmasq, dhcp_daemon, plugin_dir):
    from concurrent.futures import ThreadPoolExecutor

    server = dnsmasq()
    daemon = dhcp_daemon()
    conf = netconf(daemon.socket_path)
    paths = [lan.container()[1] for _ in range(6)]
    started = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        runs = list(pool.map(lambda i: dhcp_exec(plugin_dir, "ADD", conf, paths[i], cid=f"par{i}"), range(6)))
    elapsed = time.monotonic() - started
    assert all(r.code == 0 for r in runs), [r.stdout + r.stderr for r in runs if r.code]
    addresses = {r.json["ips"][0]["address"] for r in runs}
    assert len(addresses) == 6
    rss = [
        ln
        for ln in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines()
        if ln.startswith("VmRSS")
    ]
    print(f"6 parallel ADDs: {elapsed:.2f}s; daemon {rss[0] if rss else ''}")
    wait_for(lambda: len(server.leases()) == 6, 10, "six leases at the server")

    gc_conf = dict(
        netconf(daemon.socket_path, version="1.1.0"),
        **{"cni.dev/valid-attachments": [{"containerID": "par0", "ifname": "eth0"}]},
    )
    res = dhcp_exec(plugin_dir, "GC", gc_conf, "")
    assert res.code == 0, res.stdout + res.stderr
    wait_for(lambda: len(server.leases()) == 1, 20, "GC to release the five stale leases")
    assert lease_of(server, "par0") is not None
    assert daemon_request(daemon.socket_path, {"op": "status"})["leases"] == 1


@pytest.mark.parametrize("version", ["0.2.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_result_in_every_version(lan, dnsmasq, dhcp_daemon, plugin_dir, version):
    dnsmasq()
    daemon = dhcp_daemon()
    _, path = lan.container()
    conf = netconf(daemon.socket_path, version=version)
    res = dhcp_exec(plugin_dir, "ADD", conf, path)
    assert res.code == 0, res.stdout + res.stderr
    assert res.json["cniVersion"] == version
    if version == "0.2.0":
        assert res.json["ip4"]["ip"].startswith("10.77.0.") and res.json["ip4"]["gateway"] == SERVER_IP
    else:
        assert res.json["ips"][0]["address"].startswith("10.77.0.")
    assert dhcp_exec(plugin_dir, "DEL", conf, path).code == 0


def test_rebinds_at_t2_when_the_server_ignores_renewals(lan, dnsmasq, dhcp_daemon, plugin_dir):
    """Unicast renewals (T1) dropped at the server: the broadcast rebind (T2) keeps the lease."""
    server = dnsmasq("--dhcp-option=option:T1,3", "--dhcp-option=option:T2,6")
    daemon = dhcp_daemon()
    ctr, path = lan.container()
    conf = netconf(daemon.socket_path)
    res = dhcp_exec(plugin_dir, "ADD", conf, path)
    assert res.code == 0, res.stdout + res.stderr
    configure(ctr, res.json)
    ip = res.json["ips"][0]["address"].split("/")[0]
    # Only inside the LAN's own namespace: drop DHCP sent to the server's address (renewals).
    run(
        "ip",
        "netns",
        "exec",
        lan.net_ns,
        "iptables-nft",
        "-A",
        "INPUT",
        "-p",
        "udp",
        "--dport",
        "67",
        "-d",
        SERVER_IP,
        "-j",
        "DROP",
    )
    wait_for(lambda: "lease rebound" in daemon.log.read_text(), 40, "a rebind at T2")
    assert server.count("DHCPACK", ip) >= 2
    assert dhcp_exec(plugin_dir, "CHECK", dict(conf, prevResult=res.json), path).code == 0
    assert dhcp_exec(plugin_dir, "DEL", conf, path).code == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_expired_lease_is_reported(lan, dnsmasq, dhcp_daemon, plugin_dir):
    """The server goes silent: after the lease time (dnsmasq's minimum, 2 min) the loss shows in CHECK."""
    dnsmasq("--dhcp-option=option:T1,5", "--dhcp-option=option:T2,10")
    daemon = dhcp_daemon()
    ctr, path = lan.container()
    conf = netconf(daemon.socket_path)
    res = dhcp_exec(plugin_dir, "ADD", conf, path)
    assert res.code == 0, res.stdout + res.stderr
    configure(ctr, res.json)
    run(
        "ip",
        "netns",
        "exec",
        lan.net_ns,
        "iptables-nft",
        "-A",
        "INPUT",
        "-p",
        "udp",
        "--dport",
        "67",
        "-j",
        "DROP",
    )
    wait_for(lambda: "lease lost (expired)" in daemon.log.read_text(), 180, "the lease to expire")
    out = dhcp_exec(plugin_dir, "CHECK", dict(conf, prevResult=res.json), path)
    assert out.code != 0 and "lost" in out.json["msg"]
    assert dhcp_exec(plugin_dir, "DEL", conf, path).code == 0
