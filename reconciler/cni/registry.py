"""Which CNI types we implement and where they live.

Standard library only: the installed launcher imports this before it knows
whether it will run a plugin at all.
"""

from __future__ import annotations

import importlib.util

PLUGINS: dict[str, str] = {
    # main
    "loopback": "reconciler.plugins.main.loopback",
    "bridge": "reconciler.plugins.main.bridge",
    "ptp": "reconciler.plugins.main.ptp",
    "macvlan": "reconciler.plugins.main.macvlan",
    "ipvlan": "reconciler.plugins.main.ipvlan",
    "host-device": "reconciler.plugins.main.host_device",
    "tap": "reconciler.plugins.main.tap",
    "vlan": "reconciler.plugins.main.vlan",
    "dummy": "reconciler.plugins.main.dummy",
    # ipam
    "host-local": "reconciler.plugins.ipam.host_local",
    "static": "reconciler.plugins.ipam.static",
    "dhcp": "reconciler.plugins.ipam.dhcp",
    # meta
    "portmap": "reconciler.plugins.meta.portmap",
    "bandwidth": "reconciler.plugins.meta.bandwidth",
    "firewall": "reconciler.plugins.meta.firewall",
    "tuning": "reconciler.plugins.meta.tuning",
    "sbr": "reconciler.plugins.meta.sbr",
    "vrf": "reconciler.plugins.meta.vrf",
}


def module_for(plugin_type: str) -> str | None:
    """The module implementing `plugin_type`, or None if it is not ours (or not built yet)."""
    name = PLUGINS.get(plugin_type)
    if name is None:
        return None
    try:
        return name if importlib.util.find_spec(name) is not None else None
    except ModuleNotFoundError:
        return None


def implemented() -> list[str]:
    return sorted(t for t in PLUGINS if module_for(t))
