"""The reconciler on the real kernel: converge, no-op, prune, replace, drift + repair, bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.plugins.main.maintest import ip_json

pytestmark = pytest.mark.timeout(300)


def three(rig) -> list[dict]:
    return [{"id": f"c{i}", "network": "net1", "netns": rig.ns(f"c{i}")} for i in range(3)]


LISTEN = (
    "import socket,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
    "s.bind(('0.0.0.0',7777));s.listen();print('ready',flush=True);c,_=s.accept();c.sendall(b'pong');c.close()"
)
CONNECT = "import socket,sys;c=socket.create_connection((sys.argv[1],7777),timeout=5);print(c.recv(4).decode())"


def ping(src_ns: str, addr: str, dst_ns: str | None = None) -> bool:
    """TCP round trip from src_ns to addr (served from dst_ns): real traffic through the bridge."""
    dst_ns = dst_ns or _owner(addr)
    server = subprocess.Popen(["ip", "netns", "exec", dst_ns, sys.executable, "-c", LISTEN],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        out = subprocess.run(["ip", "netns", "exec", src_ns, sys.executable, "-c", CONNECT, addr.split("/")[0]],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip() == "pong"
    finally:
        server.kill()
        server.wait()


def _owner(addr: str) -> str:
    for ns in os.listdir("/run/netns"):
        out = subprocess.run(["ip", "-n", ns, "-o", "addr"], capture_output=True, text=True).stdout
        if f" {addr.split('/')[0]}/" in out:
            return ns
    raise AssertionError(f"nobody holds {addr}")


def test_converge_from_empty_then_noop(rig):
    rig.network()
    rig.attachments(three(rig))
    plan = rig.run("plan")
    assert plan.returncode == 2, plan.stdout + plan.stderr
    assert plan.stdout.count("add ") == 3
    out = rig.run("apply")
    assert out.returncode == 0, out.stdout + out.stderr
    ips = {i: rig.addrs(rig.ns(f"c{i}")) for i in range(3)}
    assert all(len(v) == 1 for v in ips.values()), ips
    assert len({v[0] for v in ips.values()}) == 3
    assert rig.bridge in rig.host_links("bridge")
    assert ping(rig.ns("c0"), ips[2][0])
    # a second pass plans nothing and changes nothing
    plan = rig.run("plan", "--output", "json")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert json.loads(plan.stdout)["changes"] is False
    again = rig.run("apply")
    assert again.returncode == 0
    assert "Nothing to do" in again.stdout
    assert {i: rig.addrs(rig.ns(f"c{i}")) for i in range(3)} == ips
    check = rig.run("check")
    assert check.returncode == 0, check.stdout
    status = json.loads(rig.run("status", "--output", "json").stdout)
    assert {r["id"] for r in status["attachments"]} == {"c0", "c1", "c2"}
    assert status["last_pass"]["converged"] is True


def test_prune_releases_address_and_namespace(rig):
    rig.network()
    atts = three(rig)
    rig.attachments(atts)
    assert rig.run("apply").returncode == 0
    gone = rig.addrs(rig.ns("c1"))[0].split("/")[0]
    assert gone in rig.allocations()
    rig.attachments([atts[0], atts[2]])
    plan = rig.run("plan")
    assert plan.returncode == 2 and "delete" in plan.stdout and "net1/c1/eth0" in plan.stdout
    out = rig.run("apply")
    assert out.returncode == 0, out.stdout + out.stderr
    assert rig.ns("c1") not in rig.our_namespaces()
    assert gone not in rig.allocations()
    assert not (rig.state / "results" / "net1-c1-eth0").exists()
    assert len(rig.host_links("veth")) == 2


def test_network_change_replaces_and_keeps_working(rig):
    rig.network()
    rig.attachments(three(rig)[:2])
    assert rig.run("apply").returncode == 0
    rig.network(extra={"mtu": 1400})
    plan = rig.run("plan")
    assert plan.returncode == 2 and plan.stdout.count("~ replace") == 2, plan.stdout
    out = rig.run("apply")
    assert out.returncode == 0, out.stdout + out.stderr
    link = subprocess.run(["ip", "-j", "-n", rig.ns("c0"), "link", "show", "eth0"], capture_output=True, text=True)
    assert json.loads(link.stdout)[0]["mtu"] == 1400
    assert ping(rig.ns("c0"), rig.addrs(rig.ns("c1"))[0])
    assert len(rig.allocations()) == 2
    assert rig.run("plan").returncode == 0


def test_drift_is_named_and_repaired_keeping_address(rig):
    rig.network()
    rig.attachments(three(rig))
    assert rig.run("apply").returncode == 0
    before = {i: rig.addrs(rig.ns(f"c{i}")) for i in range(3)}
    subprocess.run(["ip", "-n", rig.ns("c0"), "link", "del", "eth0"], check=True)
    subprocess.run(["ip", "-n", rig.ns("c1"), "addr", "del", before[1][0], "dev", "eth0"], check=True)
    check = rig.run("check")
    assert check.returncode == 2, check.stdout
    assert "interface eth0 missing" in check.stdout and "net1/c0/eth0" in check.stdout
    assert f"address {before[1][0]} missing" in check.stdout
    assert "net1/c2/eth0" not in check.stdout
    out = rig.run("apply")
    assert out.returncode == 0, out.stdout + out.stderr
    assert {i: rig.addrs(rig.ns(f"c{i}")) for i in range(3)} == before
    assert rig.run("check").returncode == 0
    # the bridge itself
    subprocess.run(["ip", "-n", rig.host, "link", "del", rig.bridge], check=True)
    check = rig.run("check")
    assert check.returncode == 2 and f"bridge {rig.bridge} missing" in check.stdout
    assert rig.run("apply").returncode == 0
    assert {i: rig.addrs(rig.ns(f"c{i}")) for i in range(3)} == before
    assert ping(rig.ns("c0"), before[2][0])
    assert rig.run("check").returncode == 0
    assert len(rig.allocations()) == 3


def test_namespaces_lost_with_their_mounts_come_back_keeping_addresses(rig):
    """After a reboot where /run is on disk (as on this VM), /run/netns/NAME is still a file but no
    namespace is mounted on it. The next pass removes those files of namespaces it owns, creates
    the namespaces again and repairs the attachments with their old addresses at the first try."""
    rig.network()
    rig.attachments(three(rig))
    assert rig.run("apply").returncode == 0
    before = {i: rig.addrs(rig.ns(f"c{i}")) for i in range(3)}
    for i in (0, 2):
        subprocess.run(["umount", f"/run/netns/{rig.ns(f'c{i}')}"], check=True)
        assert os.path.isfile(f"/run/netns/{rig.ns(f'c{i}')}")
    check = rig.run("check")
    assert check.returncode == 2 and f"netns {rig.ns('c0')} is gone" in check.stdout, check.stdout
    out = rig.run("apply")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no namespace was mounted" in out.stderr and "failed" not in out.stderr, out.stderr
    assert {i: rig.addrs(rig.ns(f"c{i}")) for i in range(3)} == before
    assert all(os.path.ismount(f"/run/netns/{rig.ns(f'c{i}')}") for i in range(3))
    assert rig.run("check").returncode == 0
    assert len(rig.allocations()) == 3


def _flush_portmap(rig) -> list[str]:
    """Flush the stand-in host's portmap DNAT chains, whichever firewall backend holds them."""
    flushed = []
    for tool in ("iptables-legacy", "iptables-nft"):
        out = subprocess.run(["ip", "netns", "exec", rig.host, f"{tool}-save", "-t", "nat"], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            if line.startswith(":CNI-DN-"):
                chain = line[1:].split()[0]
                subprocess.run(["ip", "netns", "exec", rig.host, tool, "-t", "nat", "-F", chain], check=True)
                flushed.append(chain)
    out = subprocess.run(["ip", "netns", "exec", rig.host, "nft", "-j", "list", "chains"], capture_output=True, text=True)
    for item in json.loads(out.stdout or '{"nftables": []}')["nftables"]:
        chain = item.get("chain")
        if chain and chain["table"] == "cni_hostport" and chain["name"] == "hostports":
            subprocess.run(["ip", "netns", "exec", rig.host, "nft", "flush", "chain", chain["family"], chain["table"],
                            chain["name"]], check=True)
            flushed.append(f"{chain['family']} {chain['table']} {chain['name']}")
    return flushed


def test_flushed_chain_is_drift(rig):
    if rig.env.get("RECONCILER_EXEC_MODE") == "1":
        pytest.skip("the reference portmap's CHECK fails on a healthy IPv4-only attachment (ip6tables lookup)")
    rig.network(portmap=True)
    att = {"id": "web", "network": "net1", "netns": rig.ns("web"),
           "capabilities": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}}
    rig.attachments([att])
    out = rig.run("apply")
    assert out.returncode == 0, out.stdout + out.stderr
    before = rig.addrs(rig.ns("web"))
    assert _flush_portmap(rig)
    check = rig.run("check")
    assert check.returncode == 2, check.stdout + check.stderr
    assert "net1/web/eth0" in check.stdout and "CHECK failed" in check.stdout
    out = rig.run("apply")
    assert out.returncode == 0, out.stdout + out.stderr
    assert rig.addrs(rig.ns("web")) == before
    assert rig.run("check").returncode == 0


def test_bad_files_are_reported_and_nothing_is_removed(rig):
    rig.network()
    rig.attachments(three(rig)[:2])
    assert rig.run("apply").returncode == 0
    ips = rig.addrs(rig.ns("c0"))
    # invalid TOML in the file that describes the running attachments
    (rig.specs / "attachments.toml").write_text('[[attachment]]\nid = "c0"\nnetwork = \n')
    (rig.specs / "extra.toml").write_text(
        f'[[attachment]]\nid = "x1"\nnetwork = "net1"\nnetns = "{rig.ns("x1")}"\ncolour = "red"\n\n'
        f'[[attachment]]\nid = "x2"\nnetwork = "nope"\nnetns = "{rig.ns("x2")}"\n'
    )
    plan = rig.run("plan")
    assert plan.returncode == 1, plan.stdout
    assert "attachments.toml:3" in plan.stdout and "invalid TOML" in plan.stdout
    assert "extra.toml:5: attachment[0].colour: unknown field" in plan.stdout
    assert "extra.toml:7: network: unknown network 'nope'" in plan.stdout
    assert "delete" not in plan.stdout
    out = rig.run("apply")
    assert out.returncode == 3, out.stdout + out.stderr
    assert rig.addrs(rig.ns("c0")) == ips
    assert rig.ns("c1") in rig.our_namespaces()
    # a broken network file keeps its attachments too
    (rig.specs / "extra.toml").unlink()
    rig.attachments(three(rig)[:2])
    (rig.specs / "net1.conflist").write_text('{"cniVersion": "1.0.0", "name": "net1", "plugins": [}')
    out = rig.run("apply")
    assert out.returncode == 3
    assert "net1.conflist" in out.stdout
    assert rig.addrs(rig.ns("c0")) == ips and len(rig.allocations()) == 2
    # fixed: the attachments are in sync again, and the status says so rather than "kept"
    rig.network()
    assert rig.run("apply").returncode == 0
    status = json.loads(rig.run("status", "--output", "json").stdout)
    assert [(r["last_action"], r["last_result"], r["error"]) for r in status["attachments"]] == [("noop", "ok", "")] * 2


def test_an_entry_moved_to_another_file_is_kept_when_that_file_breaks(rig):
    """`c1` moves from attachments.toml to moved.toml (a no-op: its record follows it), then
    moved.toml breaks: c1 is kept, not pruned as if attachments.toml had dropped it."""
    rig.network()
    rig.attachments(three(rig)[:2])
    assert rig.run("apply").returncode == 0
    ips = rig.addrs(rig.ns("c1"))
    rig.attachments(three(rig)[:1])
    rig.attachments(three(rig)[1:2], file="moved.toml")
    out = rig.run("apply")
    assert out.returncode == 0 and "Nothing to do" in out.stdout, out.stdout
    records = json.loads((rig.state / "reconciler" / "attachments.json").read_text())["attachments"]
    assert records["net1/c1/eth0"]["file"] == str(rig.specs / "moved.toml")
    (rig.specs / "moved.toml").write_text((rig.specs / "moved.toml").read_text() + "broken [[\n")
    out = rig.run("apply")
    assert out.returncode == 3 and "delete" not in out.stdout, out.stdout
    assert rig.addrs(rig.ns("c1")) == ips and rig.run("check").returncode == 0


def _results(rig) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (rig.state / "results").iterdir()}


def test_lost_records_are_rebuilt_from_the_result_cache(rig):
    """The records file lost (deleted after it was found corrupt, say): the attachments, their cache
    entries and reservations are all there. The pass takes each record back from its cache entry
    (it matches the spec exactly) instead of ADDing again, which would fail on the live interface."""
    rig.network()
    rig.attachments(three(rig))
    assert rig.run("apply").returncode == 0
    ips = {i: rig.addrs(rig.ns(f"c{i}")) for i in range(3)}
    links = {i: _link_index(rig.ns(f"c{i}")) for i in range(3)}
    (rig.state / "reconciler" / "attachments.json").write_text('{"attach')
    assert rig.run("plan").returncode == 1  # unreadable state: refused, nothing touched
    (rig.state / "reconciler" / "attachments.json").unlink()
    plan = rig.run("plan")
    assert plan.returncode == 0 and "record taken from it" in plan.stderr, plan.stdout + plan.stderr
    out = rig.run("apply")
    assert out.returncode == 0 and "Nothing to do" in out.stdout, out.stdout + out.stderr
    assert {i: rig.addrs(rig.ns(f"c{i}")) for i in range(3)} == ips
    assert {i: _link_index(rig.ns(f"c{i}")) for i in range(3)} == links  # the same interfaces: no ADD
    assert rig.run("check").returncode == 0
    status = json.loads(rig.run("status", "--output", "json").stdout)
    assert {r["id"]: r["ips"] for r in status["attachments"]} == {f"c{i}": ips[i] for i in range(3)}
    rig.attachments(three(rig)[:2])  # and they are ours again: pruning one releases it
    assert rig.run("apply").returncode == 0
    assert rig.ns("c2") not in rig.our_namespaces() and len(rig.allocations()) == 2


def test_a_failed_add_never_removes_what_was_there_before_it(rig):
    """Records lost and the network changed since: the cache entries no longer match, so the pass
    ADDs, and the bridge plugin refuses (eth0 exists). The failed ADD rolls back only what it made:
    the live interfaces and their reservations stay (a DEL of the attachment would remove them)."""
    rig.network()
    rig.attachments(three(rig)[:2])
    assert rig.run("apply").returncode == 0
    ips = {i: rig.addrs(rig.ns(f"c{i}")) for i in range(2)}
    (rig.state / "reconciler" / "attachments.json").unlink()
    rig.network(extra={"hairpinMode": True})
    out = rig.run("apply")
    assert out.returncode == 3 and "already exists" in out.stdout, out.stdout + out.stderr
    assert {i: rig.addrs(rig.ns(f"c{i}")) for i in range(2)} == ips
    assert len(rig.allocations()) == 2 and len(_results(rig)) == 2


def _link_index(ns: str) -> int:
    return ip_json(ns, "link", "show", "eth0")[0]["ifindex"]


def _host_firewall_text(rig) -> str:
    """Every firewall rule of the stand-in host, whichever backend holds them."""
    out = []
    for cmd in (["iptables-legacy-save"], ["iptables-nft-save"], ["ip6tables-legacy-save"], ["ip6tables-nft-save"],
                ["nft", "list", "ruleset"]):
        proc = subprocess.run(["ip", "netns", "exec", rig.host, *cmd], capture_output=True, text=True)
        out.append(proc.stdout)
    return "\n".join(out)


def test_teardown_deletes_namespaces_first_and_still_cleans_the_host(rig):
    """Pruning every attachment of an owned namespace deletes the namespace, then DELs without it:
    addresses released, masquerade rules gone, host veths gone by the time apply returns."""
    rig.network(extra={"ipMasq": True})
    atts = three(rig)
    rig.attachments(atts)
    assert rig.run("apply").returncode == 0
    ips = [rig.addrs(rig.ns(f"c{i}"))[0].split("/")[0] for i in range(3)]
    rules = _host_firewall_text(rig)
    assert all(ip in rules for ip in ips), rules
    rig.attachments([atts[0]])
    out = rig.run("apply")
    assert out.returncode == 0, out.stdout + out.stderr
    assert rig.our_namespaces() == [rig.ns("c0")]
    assert rig.allocations() == [ips[0]]
    rules = _host_firewall_text(rig)
    assert ips[0] in rules and ips[1] not in rules and ips[2] not in rules, rules
    assert len(rig.host_links("veth")) == 1
    assert not list((rig.state / "reconciler" / "journal").glob("*.json"))
    assert rig.run("check").returncode == 0
    rig.attachments([])
    out = rig.run("apply")
    assert out.returncode == 0, out.stdout + out.stderr
    assert rig.our_namespaces() == [] and rig.allocations() == [] and rig.host_links("veth") == []
    assert ips[0] not in _host_firewall_text(rig)
