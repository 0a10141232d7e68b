"""Linux bridges: create once (safe under concurrent callers), port flags, VLAN filtering entries."""

from __future__ import annotations

import errno
import os
from typing import Any

from reconciler.kernel import netns as nsmod
from reconciler.kernel import rtnl
from reconciler.kernel.links import Link, LinkExists, _call, _errors, _index, find, get
from reconciler.kernel.netns import KernelError


def create_bridge(
    name: str, *, netns: str | None = None, mtu: int | None = None, vlan_filtering: bool = False
) -> Link:
    data = rtnl.attr(rtnl.IFLA_BR_VLAN_FILTERING, b"\x01") if vlan_filtering else b""
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
        _call(netns, "set vlan_filtering on", name, "set", index=existing.index, kind="bridge",
              br_vlan_filtering=1)
    return existing, created


def set_bridge_port(name: str, netns: str | None = None, *, hairpin: bool | None = None,
                    isolated: bool | None = None) -> None:
    """Bridge-port flags of an enslaved link (`bridge link set dev X hairpin/isolated on|off`)."""
    spec: dict[str, Any] = {}
    if hairpin is not None:
        spec["mode"] = 1 if hairpin else 0
    if isolated is not None:
        spec["isolated"] = 1 if isolated else 0
    if not spec:
        return
    _call(netns, "set bridge port", name, "set", index=_index(name, netns), kind="bridge_slave", **spec)


def bridge_vlan(name: str, vid: int, *, add: bool = True, pvid: bool = False, untagged: bool = False,
                netns: str | None = None, vid_end: int | None = None) -> None:
    """Add/remove a VLAN (or range) on a bridge port (`bridge vlan add|del dev X vid N [pvid] [untagged]`)."""
    from pyroute2 import NetlinkError

    flags = (2 if pvid else 0) | (4 if untagged else 0)
    index = _index(name, netns)
    entries: list[dict[str, Any]]
    if vid_end is not None and vid_end != vid:
        entries = [{"vid": f"{vid}-{vid_end}"}]  # one message carrying RANGE_BEGIN + RANGE_END (tagged)
    else:
        entries = [{"vid": vid, "flags": flags}]
    with nsmod.ipr(netns) as ipr:
        for entry in entries:
            try:
                ipr.vlan_filter("add" if add else "del", index=index, vlan_info=entry)
            except NetlinkError as exc:
                if not add and exc.code in (errno.ENOENT, errno.EINVAL):
                    continue
                raise KernelError(exc.code, f"bridge vlan {vid} on {name!r}: {os.strerror(exc.code)}") from exc
