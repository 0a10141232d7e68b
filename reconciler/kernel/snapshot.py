"""One read of a namespace's links, addresses and routes, shared by many CHECKs."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
from dataclasses import dataclass, field

from reconciler.kernel import netns as nsmod
from reconciler.kernel import readscope, rtnl
from reconciler.kernel import routes as routemod
from reconciler.kernel.addrs import Address
from reconciler.kernel.links import Link
from reconciler.kernel.routes import RouteEntry


@dataclass(frozen=True)
class Snapshot:
    """Links and addresses of one namespace, read once; its routes (all tables) read on first use.

    Most CHECKs look at no route (a result without routes has none to find), and the route dump is
    the largest of the three (the local table's entries alone are several per address), so a pass
    that reads hundreds of namespaces reads routes only where a CHECK asks for them.
    """

    netns: str | None
    links: tuple[Link, ...] = ()
    addresses: tuple[Address, ...] = ()
    _by_name: dict[str, Link] = field(default_factory=dict, compare=False, repr=False)

    @functools.cached_property
    def routes(self) -> tuple[RouteEntry, ...]:
        """Every route of the namespace, IPv4 then IPv6 (OSError if it is gone by now)."""
        with nsmod.session():
            return tuple(rtnl.dump_routes(self.netns))

    def link(self, name: str) -> Link | None:
        return self._by_name.get(name)

    def link_by_index(self, index: int | None) -> Link | None:
        return next((lk for lk in self.links if lk.index == index), None) if index else None

    def addrs_of(self, name: str) -> list[Address]:
        link = self.link(name)
        return [a for a in self.addresses if link is not None and a.index == link.index]

    def routes_of(self, name: str | None = None, table: int | None = routemod.TABLE_MAIN) -> list[RouteEntry]:
        index = None
        if name is not None:
            link = self.link(name)
            if link is None:
                return []
            index = link.index
        return [r for r in self.routes
                if (table is None or r.table == table) and (index is None or r.oif == index)]

    def has_address(self, name: str, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> bool:
        return any(a.address == address for a in self.addrs_of(name))


SLOT = "netlink-snapshots"  # this module's cache in a `readscope` scope: namespace identity -> Snapshot


def shared() -> contextlib.AbstractContextManager[None]:
    """Within the block, `snapshot(ns)` reads each namespace once and hands every caller the same copy.

    For a read-only pass (the reconciler's CHECKs); anything that changes the kernel inside the
    block must call `invalidate(ns)`. The block shares the firewall backends' reads too
    (`kernel.readscope`).
    """
    return readscope.scope()


def invalidate(netns: str | None = None) -> None:
    cache = readscope.slot(SLOT)
    if cache is not None:
        cache.pop(nsmod.identity(netns) or nsmod.resolve(netns), None)


def snapshot(netns: str | None = None) -> Snapshot:
    """Links, addresses and routes of `netns` (shared inside a `shared()` block)."""
    cache = readscope.slot(SLOT)
    if cache is None:
        return read(netns)
    key = nsmod.identity(netns) or nsmod.resolve(netns)
    snap = cache.get(key)
    if snap is None:
        snap = cache[key] = read(netns)
    return snap


def read(netns: str | None = None) -> Snapshot:
    """Dump links and addresses of `netns` over one netlink socket (kernel.rtnl); routes on first use."""
    with nsmod.session():
        links = tuple(sorted(rtnl.dump_links(netns), key=lambda lk: lk.index))
        addresses = tuple(rtnl.dump_addrs(netns))
    return Snapshot(netns, links, addresses, {lk.name: lk for lk in links})
