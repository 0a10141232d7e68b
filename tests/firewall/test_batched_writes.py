"""Many operations' firewall writes in one commit per table (`firewall.batch.batched_writes`).

What the reconciler's ADD workers rely on: nothing reaches the kernel before the block ends, then
everything does, as if applied one by one; a table changed by someone else meanwhile is re-read and
the operations replayed; a write that cannot be applied is reported without losing the others.
"""

from __future__ import annotations

import ipaddress

import pytest

from reconciler.kernel.firewall import masquerade, nftables, portmap
from reconciler.kernel.firewall.batch import batched_writes
from tests.firewall.conftest import legacy_rules, nft_table, sh

NETS = [("ctr1", "10.88.0.5/16"), ("ctr2", "10.88.0.6/16"), ("ctr3", "10.88.0.7/16")]


def _ours(hostns: str, backend: str) -> str:
    if backend == "iptables":
        return "\n".join(legacy_rules(hostns))
    return nft_table(hostns, "inet", "cni_plugins_masquerade")


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_writes_land_together_at_the_end_of_the_block(hostns: str, backend: str) -> None:
    with batched_writes() as errors:
        for cid, addr in NETS:
            assert masquerade.setup("rcnnet", cid, "eth0", [ipaddress.ip_interface(addr)], backend,
                                    netns=hostns) == backend
        inside = _ours(hostns, backend)
    assert errors == []
    assert "ctr1" not in inside and "10.88.0.5" not in inside  # nothing committed inside the block
    for cid, addr in NETS:
        masquerade.check("rcnnet", cid, "eth0", [ipaddress.ip_interface(addr)], backend=backend, netns=hostns)
    if backend == "nftables":  # the shared scaffolding once, however many operations queued it
        assert _ours(hostns, backend).count("goto masq_checks") == 1
    else:
        assert len([r for r in legacy_rules(hostns) if r.startswith("-A POSTROUTING")]) == 3


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_batched_then_unbatched_is_idempotent(hostns: str, backend: str) -> None:
    addr = [ipaddress.ip_interface("10.88.0.5/16")]
    with batched_writes():
        masquerade.setup("rcnnet", "ctr1", "eth0", addr, backend, netns=hostns)
    before = _ours(hostns, backend)
    with batched_writes() as errors:  # ADD again: replaces its own rules, adds nothing
        masquerade.setup("rcnnet", "ctr1", "eth0", addr, backend, netns=hostns)
    assert errors == []
    assert _ours(hostns, backend).count("10.88.0.5") == before.count("10.88.0.5")
    masquerade.teardown("rcnnet", "ctr1", "eth0", addr, netns=hostns)
    assert "10.88.0.5" not in _ours(hostns, backend)


def test_legacy_table_changed_meanwhile_is_reread_and_replayed(hostns: str) -> None:
    with batched_writes() as errors:
        masquerade.setup("rcnnet", "ctr1", "eth0", [ipaddress.ip_interface("10.88.0.5/16")], "iptables",
                         netns=hostns)
        sh(hostns, "iptables-legacy", "-w", "-t", "nat", "-N", "RCN-SOMEONE-ELSE")  # another writer commits
        masquerade.setup("rcnnet", "ctr2", "eth0", [ipaddress.ip_interface("10.88.0.6/16")], "iptables",
                         netns=hostns)
    assert errors == []
    rules = legacy_rules(hostns)
    assert ":RCN-SOMEONE-ELSE" in " ".join(rules)  # theirs kept
    for cid, addr in NETS[:2]:
        masquerade.check("rcnnet", cid, "eth0", [ipaddress.ip_interface(addr)], backend="iptables", netns=hostns)


def test_nft_failed_write_is_reported_and_the_others_applied(hostns: str) -> None:
    bogus = {"delete": {"rule": {"family": "inet", "table": "cni_plugins_masquerade", "chain": "masq_checks",
                                 "handle": 999999}}}
    with batched_writes() as errors:
        masquerade.setup("rcnnet", "ctr1", "eth0", [ipaddress.ip_interface("10.88.0.5/16")], "nftables",
                         netns=hostns)
        nftables.transact(hostns, lambda nft: nft.run([bogus]))
        masquerade.setup("rcnnet", "ctr2", "eth0", [ipaddress.ip_interface("10.88.0.6/16")], "nftables",
                         netns=hostns)
    assert len(errors) == 1
    for cid, addr in NETS[:2]:
        masquerade.check("rcnnet", cid, "eth0", [ipaddress.ip_interface(addr)], backend="nftables", netns=hostns)


def test_nft_scripts_and_json_both_batched(hostns: str) -> None:
    """portmap writes nft scripts, ipMasq JSON: both land, one transaction per language."""
    fwd = portmap.Forward(network="rcnnet", container_id="ctr1", address=ipaddress.ip_interface("10.88.0.5/16"),
                          mappings=(portmap.PortMapping(host_port=18080, container_port=80, protocol="tcp"),),
                          snat=True)
    with batched_writes() as errors:
        portmap.IMPLS["nftables"].setup(fwd, hostns)
        masquerade.setup("rcnnet", "ctr1", "eth0", [ipaddress.ip_interface("10.88.0.5/16")], "nftables",
                         netns=hostns)
        assert "18080" not in nft_table(hostns, "ip", "cni_hostport")
    assert errors == []
    assert "dport 18080 dnat" in nft_table(hostns, "ip", "cni_hostport")
    portmap.IMPLS["nftables"].check(fwd, hostns)
    masquerade.check("rcnnet", "ctr1", "eth0", [ipaddress.ip_interface("10.88.0.5/16")], backend="nftables",
                     netns=hostns)


def test_rollback_inside_the_block_removes_what_the_block_queued(hostns: str) -> None:
    """A failed ADD's rollback runs inside the block: its teardown applies what is queued first, so
    the rules it queued are found and removed; the other operations' rules land."""
    a, b = ipaddress.ip_interface("10.88.0.5/16"), ipaddress.ip_interface("10.88.0.6/16")
    fwd = portmap.Forward(network="rcnnet", container_id="ctr1", address=a,
                          mappings=(portmap.PortMapping(host_port=18081, container_port=80),), snat=True)
    with batched_writes() as errors:
        masquerade.setup("rcnnet", "ctr1", "eth0", [a], "nftables", netns=hostns)
        portmap.IMPLS["nftables"].setup(fwd, hostns)
        masquerade.teardown("rcnnet", "ctr1", "eth0", [a], netns=hostns)  # ctr1's ADD failed: rolled back
        portmap.IMPLS["nftables"].teardown("rcnnet", "ctr1", hostns)
        masquerade.setup("rcnnet", "ctr2", "eth0", [b], "nftables", netns=hostns)
    assert errors == []
    text = nft_table(hostns, "inet", "cni_plugins_masquerade")
    assert "10.88.0.5" not in text and "10.88.0.6" in text
    assert "18081" not in nft_table(hostns, "ip", "cni_hostport")


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_teardowns_in_a_block_are_deleted_together_at_its_end(hostns: str, backend: str) -> None:
    """A run of DELs: each teardown finds its own rules though earlier ones' deletions are still
    queued (nothing is applied early), and all of them go at the end of the block."""
    addrs = {cid: [ipaddress.ip_interface(addr)] for cid, addr in NETS}
    fwds = {cid: portmap.Forward(network="rcnnet", container_id=cid, address=addrs[cid][0], snat=True,
                                 mappings=(portmap.PortMapping(host_port=18090 + i, container_port=80),))
            for i, cid in enumerate(addrs)}
    for cid, addr in addrs.items():
        masquerade.setup("rcnnet", cid, "eth0", addr, backend, netns=hostns)
        if backend == "nftables":
            portmap.IMPLS["nftables"].setup(fwds[cid], hostns)
    with batched_writes() as errors:
        for cid, addr in addrs.items():
            masquerade.teardown("rcnnet", cid, "eth0", addr, netns=hostns)
            if backend == "nftables":
                portmap.IMPLS["nftables"].teardown("rcnnet", cid, hostns)
        inside = _ours(hostns, backend)
        hostports = nft_table(hostns, "ip", "cni_hostport") if backend == "nftables" else ""
    assert errors == []
    assert all(addr.split("/")[0] in inside for _, addr in NETS), inside
    assert backend == "iptables" or all(f"dport {18090 + i} " in hostports for i in range(len(NETS)))
    after = _ours(hostns, backend)
    assert not any(addr.split("/")[0] in after for _, addr in NETS), after
    if backend == "nftables":
        assert "dport 1809" not in nft_table(hostns, "ip", "cni_hostport")


def test_engine_adds_from_a_queue_log_a_write_that_did_not_land(hostns: str, caplog) -> None:
    """The reconciler's workers give `_adds_batched` their share of the pass's queue as a generator:
    a write that does not land is logged with the number of ADDs, and every ADD's outcome is kept."""
    import logging

    from reconciler.engine.apply import Engine

    bogus = {"delete": {"rule": {"family": "inet", "table": "cni_plugins_masquerade", "chain": "masq_checks",
                                 "handle": 999999}}}

    def add(item: tuple[str, str]) -> str:
        cid, addr = item
        masquerade.setup("rcnnet", cid, "eth0", [ipaddress.ip_interface(addr)], "nftables", netns=hostns)
        if cid == "ctr2":
            nftables.transact(hostns, lambda nft: nft.run([bogus]))
        return cid

    with caplog.at_level(logging.WARNING, logger="reconciler.engine.apply"):
        done = Engine._adds_batched((item for item in NETS), add)
    assert done == ["ctr1", "ctr2", "ctr3"]
    assert "firewall writes of 3 ADDs not applied" in caplog.text, caplog.text
    for cid, addr in NETS:
        masquerade.check("rcnnet", cid, "eth0", [ipaddress.ip_interface(addr)], backend="nftables", netns=hostns)
