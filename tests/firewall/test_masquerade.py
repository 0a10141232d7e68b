"""ipMasq rules in both backends, inside a namespace standing in for the host."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest

from reconciler.kernel.firewall import masquerade
from reconciler.kernel.firewall.base import RuleDrift
from tests.firewall.conftest import legacy_rules, nft_table, sh

V4 = ipaddress.ip_interface("10.88.0.5/16")
V6 = ipaddress.ip_interface("fd00:88::5/64")


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_setup_check_teardown_idempotent(hostns: str, backend: str) -> None:
    used = masquerade.setup("rcnnet", "ctr1", "eth0", [V4, V6], backend, netns=hostns)
    assert used == backend
    masquerade.setup("rcnnet", "ctr1", "eth0", [V4, V6], backend, netns=hostns)  # ADD twice
    masquerade.check("rcnnet", "ctr1", "eth0", [V4, V6], netns=hostns)
    chain = masquerade.chain_name("rcnnet", "ctr1")
    if backend == "iptables":
        rules = legacy_rules(hostns)
        comment = '-m comment --comment "name: \\"rcnnet\\" id: \\"ctr1\\""'
        assert f"-A POSTROUTING -s 10.88.0.5/32 {comment} -j {chain}" in rules
        assert f"-A {chain} -d 10.88.0.0/16 {comment} -j ACCEPT" in rules
        assert f"-A {chain} ! -d 224.0.0.0/4 {comment} -j MASQUERADE" in rules
        assert len([r for r in rules if r.startswith("-A")]) == 3
        assert f"-A {chain} ! -d ff00::/8 {comment} -j MASQUERADE" in legacy_rules(hostns, family=6)
    else:
        text = nft_table(hostns, "inet", "cni_plugins_masquerade")
        assert "ip saddr 10.88.0.5 ip daddr != 10.88.0.0/16 masquerade" in text
        assert "ip6 saddr fd00:88::5 ip6 daddr != fd00:88::/64 masquerade" in text
        assert text.count("id: ctr1") == 2
        assert "goto masq_checks" in text
    masquerade.teardown("rcnnet", "ctr1", "eth0", [V4, V6], netns=hostns)
    masquerade.teardown("rcnnet", "ctr1", "eth0", [V4, V6], netns=hostns)  # DEL twice
    assert not [r for r in legacy_rules(hostns) if "rcnnet" in r or chain in r]
    assert "ctr1" not in nft_table(hostns, "inet", "cni_plugins_masquerade")
    with pytest.raises(LookupError):
        masquerade.check("rcnnet", "ctr1", "eth0", [V4], netns=hostns)


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_check_names_the_drifted_rule(hostns: str, backend: str) -> None:
    masquerade.setup("rcnnet", "ctr1", "eth0", [V4], backend, netns=hostns)
    chain = masquerade.chain_name("rcnnet", "ctr1")
    if backend == "iptables":
        sh(hostns, "iptables-legacy", "-t", "nat", "-D", chain, "!", "-d", "224.0.0.0/4", "-m", "comment",
           "--comment", 'name: "rcnnet" id: "ctr1"', "-j", "MASQUERADE")
        with pytest.raises(RuleDrift, match="MASQUERADE"):
            masquerade.check("rcnnet", "ctr1", "eth0", [V4], netns=hostns)
    else:
        sh(hostns, "nft", "flush", "chain", "inet", "cni_plugins_masquerade", "masq_checks")
        with pytest.raises(RuleDrift, match="10.88.0.5"):
            masquerade.check("rcnnet", "ctr1", "eth0", [V4], backend="nftables", netns=hostns)


def test_gc_keeps_valid_and_foreign(hostns: str) -> None:
    # foreign rules in the same tables must survive everything we do
    sh(hostns, "iptables-legacy", "-t", "nat", "-A", "POSTROUTING", "-s", "10.99.0.0/24", "-j", "MASQUERADE")
    sh(hostns, "nft", "add", "table", "inet", "rcnforeign")
    for backend in ("iptables", "nftables"):
        masquerade.setup("rcnnet", "keep", "eth0", [ipaddress.ip_interface("10.88.0.7/16")], backend, netns=hostns)
        masquerade.setup("rcnnet", "gone", "eth0", [ipaddress.ip_interface("10.88.0.8/16")], backend, netns=hostns)
        masquerade.setup("other", "gone", "eth0", [ipaddress.ip_interface("10.77.0.8/16")], backend, netns=hostns)
    masquerade.gc("rcnnet", {("keep", "eth0")}, netns=hostns)
    rules = "\n".join(legacy_rules(hostns))
    text = nft_table(hostns, "inet", "cni_plugins_masquerade")
    assert "10.88.0.7" in rules and "10.88.0.7" in text
    assert "10.88.0.8" not in rules and "10.88.0.8" not in text
    assert masquerade.chain_name("rcnnet", "gone") not in rules
    assert "10.77.0.8" in rules and "10.77.0.8" in text  # other network untouched
    assert "-A POSTROUTING -s 10.99.0.0/24 -j MASQUERADE" in rules
    assert "rcnforeign" in sh(hostns, "nft", "list", "tables")
    masquerade.check("rcnnet", "keep", "eth0", [ipaddress.ip_interface("10.88.0.7/16")], "iptables", hostns)
    masquerade.check("rcnnet", "keep", "eth0", [ipaddress.ip_interface("10.88.0.7/16")], "nftables", hostns)


def test_attachment_stays_in_its_backend(hostns: str) -> None:
    masquerade.setup("rcnnet", "ctr1", "eth0", [V4], "nftables", netns=hostns)
    # a later ADD without a forced backend keeps using the one holding the rules
    assert masquerade.setup("rcnnet", "ctr1", "eth0", [V4], None, netns=hostns) == "nftables"
    assert not [r for r in legacy_rules(hostns) if r.startswith("-A")]


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_masquerade_traffic(make_netns, tmp_path, backend: str, reference_plugins) -> None:
    from tests.firewall.env import World

    world = World(make_netns, tmp_path)
    try:
        ctr, _, prev = world.container("ctr1")
        client, host_ip = world.outside_client()
        world.serve(client, 7000, "PEER")  # answers with the source address it saw
        addr = ipaddress.ip_interface(prev["ips"][0]["address"])
        assert world.connect(ctr, "10.251.0.2", 7000) == str(addr.ip)  # routed, not masqueraded
        masquerade.setup(world.name, "ctr1", "eth0", [addr], backend, netns=world.host)
        sh(world.host, "conntrack", "-F", check=False)
        assert world.connect(ctr, "10.251.0.2", 7000) == host_ip  # masqueraded behind the host
        masquerade.teardown(world.name, "ctr1", "eth0", [addr], netns=world.host)
        sh(world.host, "conntrack", "-F", check=False)
        assert world.connect(ctr, "10.251.0.2", 7000) == str(addr.ip)
    finally:
        world.close()


def _shared_reads(opener: str, backend: str) -> contextlib.AbstractContextManager[None]:
    """The backend's own read-sharing block, or a reconcile pass's (`snapshot.shared`, every kind)."""
    if opener == "pass":
        from reconciler.kernel import snapshot

        return snapshot.shared()
    from reconciler.kernel.firewall import iptables, nftables

    return (iptables if backend == "iptables" else nftables).shared_reads()


@pytest.mark.parametrize("opener", ["backend", "pass"])
def test_shared_reads_reuse_one_table_read(hostns: str, opener: str) -> None:
    masquerade.setup("rcnnet", "ctr1", "eth0", [V4], "iptables", netns=hostns)
    chain = masquerade.chain_name("rcnnet", "ctr1")
    with _shared_reads(opener, "iptables"):
        masquerade.check("rcnnet", "ctr1", "eth0", [V4], "iptables", hostns)
        # changed behind our back: the pass keeps judging the table it read once
        sh(hostns, "iptables-legacy", "-t", "nat", "-F", chain)
        masquerade.check("rcnnet", "ctr1", "eth0", [V4], "iptables", hostns)
        # our own writes drop the shared copy, so what we add is seen
        masquerade.setup("rcnnet", "ctr2", "eth0", [ipaddress.ip_interface("10.88.0.9/16")], "iptables", hostns)
        masquerade.check("rcnnet", "ctr2", "eth0", [ipaddress.ip_interface("10.88.0.9/16")], "iptables", hostns)
        with pytest.raises(RuleDrift):
            masquerade.check("rcnnet", "ctr1", "eth0", [V4], "iptables", hostns)
    with pytest.raises(RuleDrift):
        masquerade.check("rcnnet", "ctr1", "eth0", [V4], "iptables", hostns)


@pytest.mark.parametrize("opener", ["backend", "pass"])
def test_nft_shared_reads_reuse_one_listing(hostns: str, opener: str) -> None:
    masquerade.setup("rcnnet", "ctr1", "eth0", [V4], "nftables", netns=hostns)
    with _shared_reads(opener, "nftables"):
        masquerade.check("rcnnet", "ctr1", "eth0", [V4], "nftables", hostns)
        sh(hostns, "nft", "flush", "chain", "inet", "cni_plugins_masquerade", "masq_checks")
        masquerade.check("rcnnet", "ctr1", "eth0", [V4], "nftables", hostns)  # the pass's listing
        masquerade.setup("rcnnet", "ctr2", "eth0", [ipaddress.ip_interface("10.88.0.9/16")], "nftables", hostns)
        masquerade.check("rcnnet", "ctr2", "eth0", [ipaddress.ip_interface("10.88.0.9/16")], "nftables", hostns)
        with pytest.raises(RuleDrift):
            masquerade.check("rcnnet", "ctr1", "eth0", [V4], "nftables", hostns)
