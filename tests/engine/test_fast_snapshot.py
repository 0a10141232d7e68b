"""The raw-netlink snapshot the reconciler's passes read (kernel.nldump) equals pyroute2's (kernel.snapshot)."""

from __future__ import annotations

import subprocess

from reconciler.kernel import nldump, snapshot


def sh(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True, capture_output=True)


def _without_timers(info: dict) -> dict:
    return {k: v for k, v in info.items() if "TIMER" not in k}  # live bridge timers tick between two reads


def test_nldump_matches_pyroute2(make_netns):
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
    for path in (host_path, cont_path):
        slow, fast = snapshot.read(path), nldump.read(path)
        assert fast.links == slow.links
        assert fast.addresses == slow.addresses
        assert sorted(map(repr, fast.routes)) == sorted(map(repr, slow.routes))
        for a, b in zip(slow.links, fast.links, strict=True):
            assert _without_timers(a.info) == _without_timers(b.info), a.name
            assert _without_timers(a.slave_info) == _without_timers(b.slave_info), a.name
    port = nldump.read(host_path).link("veth0")
    assert port is not None and port.alias == "port-of-c" and port.mtu == 1400 and port.slave_kind == "bridge"


def test_prime_fills_the_shared_block_and_skips_gone_namespaces(make_netns):
    _name, path = make_netns("rcn-fs-")
    with snapshot.shared():
        got = nldump.prime([path, "/run/netns/rcn-fs-does-not-exist"])
        assert got["/run/netns/rcn-fs-does-not-exist"] is None
        assert snapshot.snapshot(path) is got[path]  # the plugins' CHECKs reuse the primed read


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
