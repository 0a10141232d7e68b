"""Backend choice: forced, existing rules of either kind, then the host's iptables alternative."""

from __future__ import annotations

import pytest

from reconciler.kernel.firewall import select
from tests.firewall.conftest import sh


def test_forced_backend_wins(hostns: str) -> None:
    assert select.choose("iptables", hostns) == "iptables"
    assert select.choose("nftables", hostns) == "nftables"
    with pytest.raises(ValueError, match="backend"):
        select.choose("ebtables", hostns)


def test_existing_legacy_cni_rules_pick_iptables(hostns: str) -> None:
    sh(hostns, "iptables-legacy", "-t", "nat", "-N", "CNI-HOSTPORT-DNAT")
    assert select.existing(hostns) == "iptables"
    assert select.choose(None, hostns) == "iptables"


def test_existing_nft_tables_pick_nftables(hostns: str) -> None:
    sh(hostns, "nft", "add", "table", "ip", "cni_hostport")
    assert select.existing(hostns) == "nftables"
    assert select.choose(None, hostns) == "nftables"


def test_attachment_rules_decide_before_anything_else(hostns: str) -> None:
    sh(hostns, "nft", "add", "table", "ip", "cni_hostport")
    assert select.choose(None, hostns, holds=lambda b: b == "iptables") == "iptables"


def test_fresh_namespace_follows_the_alternative(hostns: str) -> None:
    alt = select.alternative()
    assert select.existing(hostns) is None
    assert select.choose(None, hostns) == (alt or "iptables")
    assert select.describe()["default"] == (alt or "iptables")
