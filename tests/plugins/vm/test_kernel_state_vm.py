"""The field-by-field kernel-state differential (tests/plugins/test_kernel_state_differential.py) for the
link kinds this host's kernel lacks: ipvlan, vlan and vrf (kernelvm: tests/vm/run.sh runs these for real,
ours in-process, the reference exec'd)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.plugins.test_kernel_state_differential import (
    DEFAULTS,
    Case,
    assert_same_as_reference,
    host_local_dual,
    host_local_v4,
    uplink,
)

pytestmark = pytest.mark.kernelvm

# ipvlan announces IPv6 addresses (ndisc_notify), as upstream since plugins#979, after the 1.1.1 we run.
IPVLAN_KNOWN = frozenset({"ndisc_notify"})
CASES: dict[str, tuple[str, Case]] = {  # name -> (the link kind it needs, the case)
    "ipvlan-l2": ("ipvlan", (lambda d: [{"type": "ipvlan", "master": "rcnksup0", "mode": "l2",
                                         "ipam": host_local_v4("10.227.0.0/24", d, routes=DEFAULTS)}], uplink)),
    "ipvlan-l3-dual": ("ipvlan", (lambda d: [{"type": "ipvlan", "master": "rcnksup0", "mode": "l3",
                                              "ipam": host_local_dual("10.232.0.0/24", "fd00:232::/64", d)}], uplink)),
    "vlan-dual-mtu": ("vlan", (lambda d: [{"type": "vlan", "master": "rcnksup0", "vlanId": 42, "mtu": 1400,
                                           "ipam": host_local_dual("10.228.0.0/24", "fd00:228::/64", d)}], uplink)),
    # No routes beyond the connected one: enslaving drops the others, and 1.1.1 does not re-add them in the
    # VRF's table where later versions (and ours) do (tests/plugins/meta/test_vrf.py covers that).
    "ptp-vrf": ("vrf", (lambda d: [{"type": "ptp", "ipam": host_local_v4("10.229.0.0/24", d)},
                                   {"type": "vrf", "vrfname": "rcnksvrf", "table": 1229}], None)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_state_matches_the_reference(name: str, need_kind, plugin_dir: Path, reference_plugins: Path,
                                            make_netns, tmp_path: Path) -> None:
    kind, case = CASES[name]
    need_kind(kind)
    assert_same_as_reference(name, case, plugin_dir, make_netns, tmp_path,
                             IPVLAN_KNOWN if kind == "ipvlan" else frozenset())
