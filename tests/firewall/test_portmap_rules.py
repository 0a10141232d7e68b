"""portmap's kernel side in both backends: layout, idempotence, CHECK drift, teardown."""

from __future__ import annotations

import ipaddress

import pytest

from reconciler.kernel.firewall import portmap as pm
from reconciler.kernel.firewall.base import RuleDrift
from tests.firewall.conftest import legacy_rules, nft_table, sh

MAPPINGS = (pm.PortMapping(8080, 80, "tcp"), pm.PortMapping(8053, 53, "udp", "10.251.0.1"),
            pm.PortMapping(8443, 443, "tcp", "fd00:251::1"))


def forwards() -> list[pm.Forward]:
    return [pm.Forward("rcnpm", "ctr1", ipaddress.ip_interface(a), MAPPINGS)
            for a in ("10.250.0.5/24", "fd00:250::5/64")]


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_setup_check_teardown(hostns: str, backend: str) -> None:
    impl = pm.IMPLS[backend]
    for fwd in forwards():
        impl.setup(fwd, hostns)
        impl.setup(fwd, hostns)  # idempotent
        impl.check(fwd, hostns)
    assert impl.has_attachment("rcnpm", "ctr1", hostns)
    if backend == "iptables":
        v4 = "\n".join(legacy_rules(hostns))
        assert v4.count("-j DNAT") == 2 and "-d 10.251.0.1/32" in v4 and "fd00" not in v4
        v6 = "\n".join(legacy_rules(hostns, family=6))
        assert "--to-destination [fd00:250::5]:443" in v6 and "-d fd00:251::1/128" in v6
        chain = pm.dn_chain("rcnpm", "ctr1")
        sh(hostns, "iptables-legacy", "-t", "nat", "-F", chain)
    else:
        text = nft_table(hostns, "ip", "cni_hostport")
        assert "ip daddr 10.251.0.1 udp dport 8053 dnat to 10.250.0.5:53" in text
        assert "ip6 daddr fd00:251::1 tcp dport 8443 dnat to [fd00:250::5]:443" in nft_table(
            hostns, "ip6", "cni_hostport")
        sh(hostns, "nft", "flush", "chain", "ip", "cni_hostport", "hostports")
    with pytest.raises(RuleDrift):
        impl.check(forwards()[0], hostns)
    impl.setup(forwards()[0], hostns)  # ADD repairs
    impl.check(forwards()[0], hostns)
    impl.teardown("rcnpm", "ctr1", hostns)
    impl.teardown("rcnpm", "ctr1", hostns)
    assert not impl.has_attachment("rcnpm", "ctr1", hostns)
    assert not [r for r in legacy_rules(hostns) + legacy_rules(hostns, family=6) if "CNI-DN-" in r]
    assert '"ctr1"' not in nft_table(hostns, "ip", "cni_hostport") + nft_table(hostns, "ip6", "cni_hostport")


def test_changed_mappings_replace_the_old_ones(hostns: str) -> None:
    impl = pm.IMPLS["iptables"]
    addr = ipaddress.ip_interface("10.250.0.5/24")
    impl.setup(pm.Forward("rcnpm", "ctr1", addr, (pm.PortMapping(8080, 80),)), hostns)
    impl.setup(pm.Forward("rcnpm", "ctr1", addr, (pm.PortMapping(9090, 90),)), hostns)
    text = "\n".join(legacy_rules(hostns))
    assert "9090" in text and "8080" not in text
