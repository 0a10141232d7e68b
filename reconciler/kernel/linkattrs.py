"""The tunable attributes of one link: MAC, MTU, promisc, allmulti, txqueuelen.

`links.py` covers creating and wiring links; this module reads and sets the
handful of attributes the tuning plugin changes and restores, in one netlink
read per call.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

from reconciler.kernel import netns as nsmod
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


def _get(ipr: Any, name: str, netns: str | None) -> Any:
    idx = ipr.link_lookup(ifname=name)
    if not idx:
        raise LinkNotFound(name, netns)
    return ipr.get_links(idx[0])[0]


def read(name: str, netns: str | None = None) -> LinkAttrs:
    """The current attributes of `name`; raises LinkNotFound."""
    with nsmod.ipr(netns) as ipr:
        msg = _get(ipr, name, netns)
    flags = int(msg["flags"])
    return LinkAttrs(
        index=int(msg["index"]),
        mac=str(msg.get("IFLA_ADDRESS") or "").lower(),
        mtu=int(msg.get("IFLA_MTU") or 0),
        promisc=bool(flags & IFF_PROMISC),
        allmulti=bool(flags & IFF_ALLMULTI),
        txqlen=int(msg.get("IFLA_TXQLEN") or 0),
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
    from pyroute2 import NetlinkError

    with nsmod.ipr(netns) as ipr:
        msg = _get(ipr, name, netns)
        index = int(msg["index"])

        def call(what: str, **spec: Any) -> None:
            try:
                ipr.link("set", index=index, **spec)
            except NetlinkError as exc:
                raise KernelError(exc.code, f"set {what} of {name!r}: {exc}") from exc

        if mac is not None and str(msg.get("IFLA_ADDRESS") or "").lower() != mac.lower():
            try:
                ipr.link("set", index=index, address=mac)
            except NetlinkError as exc:
                if exc.code != errno.EBUSY:
                    raise KernelError(exc.code, f"set MAC of {name!r}: {exc}") from exc
                was_up = bool(int(msg["flags"]) & IFF_UP)
                call("state", state="down")
                call("MAC", address=mac)
                if was_up:
                    call("state", state="up")
        if mtu is not None:
            call("MTU", mtu=mtu)
        if promisc is not None:
            call("promisc", flags=IFF_PROMISC if promisc else 0, change=IFF_PROMISC)
        if allmulti is not None:
            call("allmulti", flags=IFF_ALLMULTI if allmulti else 0, change=IFF_ALLMULTI)
        if txqlen is not None:
            call("txqueuelen", txqlen=txqlen)
