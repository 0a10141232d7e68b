"""The tunable attributes of one link: MAC, MTU, promisc, allmulti, txqueuelen.

`links.py` covers creating and wiring links; this module reads and sets the
handful of attributes the tuning plugin changes and restores, in one netlink
read per call (over kernel.rtnl: a cold tuning call imports no pyroute2).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from reconciler.kernel import rtnl
from reconciler.kernel.netns import KernelError, LinkNotFound

IFF_UP = 0x1
IFF_PROMISC = 0x100
IFF_ALLMULTI = 0x200


@dataclass(frozen=True)
class LinkAttrs:
    index: int
    mac: str
    mtu: int
    promisc: bool
    allmulti: bool
    txqlen: int


def _raw(name: str, netns: str | None) -> tuple[int, int, dict[int, bytes]]:
    try:
        return rtnl.get_link_attrs(netns, name=name)  # type: ignore[no-any-return]
    except rtnl.NetlinkError as exc:
        if exc.code == errno.ENODEV:
            raise LinkNotFound(name, netns) from exc
        raise KernelError(exc.code, f"read {name!r}: {os.strerror(exc.code)}") from exc


def read(name: str, netns: str | None = None) -> LinkAttrs:
    """The current attributes of `name`; raises LinkNotFound."""
    index, flags, attrs = _raw(name, netns)
    return LinkAttrs(
        index=index,
        mac=rtnl.mac_text(attrs.get(rtnl.IFLA_ADDRESS)),
        mtu=rtnl.u32(attrs.get(rtnl.IFLA_MTU)) or 0,
        promisc=bool(flags & IFF_PROMISC),
        allmulti=bool(flags & IFF_ALLMULTI),
        txqlen=rtnl.u32(attrs.get(rtnl.IFLA_TXQLEN)) or 0,
    )


def update(
    name: str,
    netns: str | None = None,
    *,
    mac: str | None = None,
    mtu: int | None = None,
    promisc: bool | None = None,
    allmulti: bool | None = None,
    txqlen: int | None = None,
) -> None:
    """Set the given attributes (None: leave alone). A MAC the device refuses while up is set down/up."""
    index, flags, attrs = _raw(name, netns)

    def call(what: str, *, on: int = 0, change: int = 0, encoded: bytes = b"") -> None:
        try:
            rtnl.set_link(netns, index, on, change, encoded)
        except rtnl.NetlinkError as exc:
            raise KernelError(exc.code, f"set {what} of {name!r}: {os.strerror(exc.code)}") from exc

    current_mac = attrs.get(rtnl.IFLA_ADDRESS)
    if mac is not None and (current_mac or b"") != rtnl.mac_bytes(mac):
        encoded = rtnl.attr(rtnl.IFLA_ADDRESS, rtnl.mac_bytes(mac))
        try:
            rtnl.set_link(netns, index, 0, 0, encoded)
        except rtnl.NetlinkError as exc:
            if exc.code != errno.EBUSY:
                raise KernelError(exc.code, f"set MAC of {name!r}: {os.strerror(exc.code)}") from exc
            call("state", change=IFF_UP)
            call("MAC", encoded=encoded)
            if flags & IFF_UP:
                call("state", on=IFF_UP, change=IFF_UP)
    if mtu is not None:
        call("MTU", encoded=rtnl.attr_u32(rtnl.IFLA_MTU, mtu))
    if promisc is not None:
        call("promisc", on=IFF_PROMISC if promisc else 0, change=IFF_PROMISC)
    if allmulti is not None:
        call("allmulti", on=IFF_ALLMULTI if allmulti else 0, change=IFF_ALLMULTI)
    if txqlen is not None:
        call("txqueuelen", encoded=rtnl.attr_u32(rtnl.IFLA_TXQLEN, txqlen))
