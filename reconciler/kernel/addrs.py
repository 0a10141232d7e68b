"""IP addresses on links: add (idempotent), delete, list, and wait for IPv6 DAD to settle."""

from __future__ import annotations

import errno
import os
import socket
import time
from dataclasses import dataclass

from reconciler import ipparse
from reconciler.kernel import netns as nsmod
from reconciler.kernel import rtnl
from reconciler.kernel.links import get as get_link
from reconciler.kernel.netns import KernelError, LinkNotFound

IPInterface = ipparse.IPInterface

IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
IFA_F_PERMANENT = 0x80

SCOPE_UNIVERSE = 0
SCOPE_LINK = 253
SCOPE_HOST = 254


@dataclass(frozen=True)
class Address:
    index: int  # ifindex of the link
    address: IPInterface
    scope: int
    flags: int

    @property
    def tentative(self) -> bool:
        return bool(self.flags & IFA_F_TENTATIVE)

    @property
    def dad_failed(self) -> bool:
        return bool(self.flags & IFA_F_DADFAILED)

    @property
    def is_global(self) -> bool:
        """Global unicast in the sense Go's IP.IsGlobalUnicast uses (not loopback/link-local/multicast)."""
        ip = self.address.ip
        return not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified)


def list_addrs(netns: str | None = None, ifname: str | None = None, family: int | None = None, *,
               index: int = 0) -> list[Address]:
    """Addresses of the namespace, or of one link (`index`: its ifindex, when the caller knows it);
    family 4 or 6 filters."""
    if ifname is not None and not index:
        index = get_link(ifname, netns).index
    fam = {4: socket.AF_INET, 6: socket.AF_INET6}.get(family or 0, 0)
    return rtnl.dump_addrs(netns, index, fam)  # type: ignore[no-any-return]


def add(ifname: str, address: IPInterface | str, netns: str | None = None, *, nodad: bool = False,
        scope: int | None = None, index: int = 0) -> bool:
    """Add `address` to `ifname` (`index`: its ifindex, when the caller knows it); False (no error)
    if it is already there with that prefix."""
    iface = ipparse.interface(address)
    index = index or get_link(ifname, netns).index
    flags = IFA_F_NODAD if nodad and iface.version == 6 else 0
    # a broadcast address as `ip addr add ... brd +` sets one
    broadcast = iface.network.broadcast_address if iface.version == 4 and iface.network.prefixlen < 31 else None
    try:
        rtnl.add_addr(netns, index, iface, flags=flags, broadcast=broadcast, scope=scope or 0)
    except rtnl.NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return False
        if exc.code == errno.ENODEV:
            raise LinkNotFound(ifname, netns) from exc
        raise KernelError(exc.code, f"add {iface} to {ifname!r}: {os.strerror(exc.code)}") from exc
    return True


def delete(ifname: str, address: IPInterface | str, netns: str | None = None) -> bool:
    """Remove `address` from `ifname`; False if it (or the link) was not there."""
    iface = ipparse.interface(address)
    try:
        index = get_link(ifname, netns).index
    except (LinkNotFound, nsmod.NetnsNotFound):
        return False
    try:
        rtnl.del_addr(netns, index, iface)
    except rtnl.NetlinkError as exc:
        if exc.code in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
            return False
        raise KernelError(exc.code, f"delete {iface} from {ifname!r}: {os.strerror(exc.code)}") from exc
    return True


def settle(ifname: str, netns: str | None = None, timeout: float = 5.0) -> None:
    """Wait until no IPv6 address of `ifname` is tentative; raise if DAD failed or time ran out.

    Without carrier there is nothing to wait for: DAD starts only when the carrier comes (a NIC
    without its cable, a veth whose peer is down), and the addresses settle then. The reference
    returns with them tentative too; failing the ADD after the timeout would refuse a device
    that works the moment it is plugged in."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        link = get_link(ifname, netns)  # its index for the dump, and its carrier
        pending = []
        for addr in list_addrs(netns, family=6, index=link.index):
            if addr.dad_failed:
                raise KernelError(errno.EADDRINUSE, f"{addr.address} on {ifname!r}: duplicate address detected")
            if addr.tentative:
                pending.append(addr)
        if not pending or not link.carrier:
            return
        if time.monotonic() >= deadline:
            raise KernelError(errno.ETIMEDOUT, f"{ifname!r}: addresses still tentative after {timeout}s: "
                              + ", ".join(str(a.address) for a in pending))
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
