"""VRF devices: find, create, list members, enslave an interface keeping its addresses and routes.

Needs the kernel's `vrf` link kind (CONFIG_NET_VRF): without it `create` says
so. Enslaving a link to a VRF cycles it, which drops its IPv6 addresses and its
routes: `enslave` saves them first and puts them back, the routes into the
VRF's table.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass

from reconciler.kernel import addrs, links, routes
from reconciler.kernel.netns import KernelError

SCOPE_LINK = 253
ROUTE_WAIT_DELAYS = tuple(0.01 * 2**i for i in range(8))  # 10 ms .. 1.28 s, as the reference


@dataclass(frozen=True)
class Vrf:
    index: int
    name: str
    table: int


def _from_link(link: links.Link) -> Vrf:
    return Vrf(index=link.index, name=link.name, table=int(link.info.get("IFLA_VRF_TABLE") or 0))


def list_vrfs(netns: str | None = None) -> list[Vrf]:
    return [_from_link(link) for link in links.list_links(netns) if link.kind == "vrf"]


def find(name: str, netns: str | None = None) -> Vrf | None:
    """The VRF called `name`; KernelError(EEXIST) when `name` is some other kind of link."""
    link = links.find(name, netns)
    if link is None:
        return None
    if link.kind != "vrf":
        raise KernelError(errno.EEXIST, f"{name!r} exists and is not a VRF (kind {link.kind or 'device'})")
    return _from_link(link)


def first_free_table(netns: str | None = None) -> int:
    """The lowest table id from 1 that no VRF of the namespace uses."""
    used = {v.table for v in list_vrfs(netns)}
    table = 1
    while table in used:
        table += 1
    return table


def create(name: str, table: int, netns: str | None = None) -> Vrf:
    """Create the VRF `name` with `table` and bring it up."""
    try:
        link = links.create_vrf(name, table, netns=netns)
    except links.LinkExists:
        raise
    except KernelError as exc:
        if exc.errno == errno.EOPNOTSUPP:
            raise KernelError(exc.errno, "this kernel has no VRF support (CONFIG_NET_VRF)") from exc
        code = exc.errno or errno.EIO
        raise KernelError(code, f"create VRF {name!r} table {table}: {os.strerror(code)}") from exc
    links.set_up(name, netns)
    return _from_link(link)


def members(vrf: Vrf, netns: str | None = None) -> list[str]:
    return [link.name for link in links.list_links(netns) if link.master == vrf.index]


def enslave(ifname: str, vrf: Vrf, netns: str | None = None) -> None:
    """Make `ifname` a member of `vrf`, keeping its global IPv6 addresses and its non-connected routes."""
    link = links.get(ifname, netns)
    if link.master == vrf.index:
        return
    saved_v6 = [a for a in addrs.list_addrs(netns, ifname, family=6) if a.scope != SCOPE_LINK]
    saved_routes = [r for r in routes.list_routes(netns, oif=link.index)
                    if r.scope == routes.SCOPE_UNIVERSE and r.type == routes.RTN_UNICAST]
    links.set_master(ifname, vrf.name, netns)
    present = {a.address for a in addrs.list_addrs(netns, ifname, family=6)}
    for addr in saved_v6:
        if addr.address in present:
            continue
        # it passed DAD on this very link a moment ago; without nodad it would stay tentative for a
        # while and the routes below that name it as source would be refused (EINVAL)
        addrs.add(ifname, addr.address, netns, nodad=True)
        _wait_for_table_route(link.index, vrf.table, netns)
    if saved_v6:
        addrs.settle(ifname, netns)
    for route in saved_routes:
        routes.add(route.dst, gateway=route.gateway, ifname=ifname, netns=netns, table=vrf.table,
                   scope=route.scope, metric=route.priority, src=route.prefsrc, proto=route.proto)


def _wait_for_table_route(oif: int, table: int, netns: str | None) -> None:
    """The kernel adds a re-added address's local routes asynchronously: wait (bounded) for them."""
    for delay in ROUTE_WAIT_DELAYS:
        if routes.list_routes(netns, family=6, table=table, oif=oif):
            return
        time.sleep(delay)


def release(ifname: str, netns: str | None = None) -> bool:
    """Take `ifname` out of its master; False when the link is gone."""
    link = links.find(ifname, netns)
    if link is None:
        return False
    if link.master:
        links.set_master(ifname, None, netns)
    return True


def delete(name: str, netns: str | None = None) -> bool:
    return links.delete(name, netns)
