"""Linux bridges: create once (safe under concurrent callers), port flags, VLAN filtering entries."""

from __future__ import annotations

import errno
import os

from reconciler.kernel import rtnl
from reconciler.kernel.links import Link, LinkExists, _errors, _index, find, get
from reconciler.kernel.netns import KernelError

_VLAN_FILTERING_ON = rtnl.encode_kind_data(rtnl.KIND_DATA, "bridge", {"IFLA_BR_VLAN_FILTERING": 1})


def create_bridge(
    name: str, *, netns: str | None = None, mtu: int | None = None, vlan_filtering: bool = False
) -> Link:
    data = _VLAN_FILTERING_ON if vlan_filtering else b""
    with _errors(netns, "create bridge", name, creating=True):
        rtnl.create_link(netns, name, "bridge", mtu=mtu, info_data=data)
    return get(name, netns)


def ensure_bridge(
    name: str, *, netns: str | None = None, mtu: int | None = None, vlan_filtering: bool = False
) -> tuple[Link, bool]:
    """Create the bridge unless a bridge of that name exists. Returns (bridge, created).

    Raises KernelError(EEXIST) when `name` exists and is not a bridge. Safe under concurrent callers.
    """
    existing = find(name, netns)
    created = False
    if existing is None:
        try:
            existing = create_bridge(name, netns=netns, mtu=mtu, vlan_filtering=vlan_filtering)
            created = True
        except LinkExists:
            existing = get(name, netns)
    if existing.kind != "bridge":
        raise KernelError(errno.EEXIST, f"{name!r} already exists but is not a bridge")
    if vlan_filtering and not existing.info.get("IFLA_BR_VLAN_FILTERING"):
        with _errors(netns, "set vlan_filtering on", name):
            rtnl.change_link_info(netns, existing.index, "bridge", data=_VLAN_FILTERING_ON)
    return existing, created


BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED = 2, 4
BRIDGE_VLAN_INFO_RANGE_BEGIN, BRIDGE_VLAN_INFO_RANGE_END = 8, 16


def set_bridge_port(name: str, netns: str | None = None, *, hairpin: bool | None = None,
                    isolated: bool | None = None) -> None:
    """Bridge-port flags of an enslaved link (`bridge link set dev X hairpin/isolated on|off`)."""
    flags = {key: int(value) for key, value in (("IFLA_BRPORT_MODE", hairpin), ("IFLA_BRPORT_ISOLATED", isolated))
             if value is not None}
    if not flags:
        return
    index = _index(name, netns)
    with _errors(netns, "set bridge port", name):
        rtnl.change_link_info(netns, index, "bridge_slave",
                              port_data=rtnl.encode_kind_data(rtnl.PORT_DATA, "bridge", flags))


def bridge_vlan(name: str, vid: int, *, add: bool = True, pvid: bool = False, untagged: bool = False,
                netns: str | None = None, vid_end: int | None = None) -> None:
    """Add/remove a VLAN (or range) on a bridge port (`bridge vlan add|del dev X vid N [pvid] [untagged]`)."""
    index = _index(name, netns)
    if vid_end is not None and vid_end != vid:  # one message carrying RANGE_BEGIN + RANGE_END (tagged)
        entries = [(BRIDGE_VLAN_INFO_RANGE_BEGIN, vid), (BRIDGE_VLAN_INFO_RANGE_END, vid_end)]
    else:
        entries = [((BRIDGE_VLAN_INFO_PVID if pvid else 0) | (BRIDGE_VLAN_INFO_UNTAGGED if untagged else 0), vid)]
    try:
        rtnl.bridge_vlans(netns, index, entries, add=add)
    except rtnl.NetlinkError as exc:
        if not add and exc.code in (errno.ENOENT, errno.EINVAL):
            return
        raise KernelError(exc.code, f"bridge vlan {vid} on {name!r}: {os.strerror(exc.code)}") from exc
