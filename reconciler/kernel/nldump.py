"""Fast namespace snapshots: links, addresses and routes read over a raw netlink socket.

`kernel.snapshot.read` goes through pyroute2, which decodes every attribute of every
message through its asyncio machinery: ~10 ms per namespace, the largest cost of a
reconcile pass that reads hundreds of namespaces. This module dumps the same three
tables with plain `socket` calls and decodes only the attributes `Snapshot` exposes,
building the very same `Link`, `Address` and `RouteEntry` records (a link's
kind-specific data, `Link.info`, is still decoded by pyroute2, from the raw message,
the first time someone asks for it). `prime()` fills the shared snapshot cache of a
`kernel.snapshot.shared()` block for many namespaces at once, so every CHECK of the
block reads from it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from typing import Any

from reconciler.kernel import netns as nsmod
from reconciler.kernel import snapshot as snapmod
from reconciler.kernel.addrs import Address
from reconciler.kernel.links import IFF_PROMISC, IFF_UP, Link
from reconciler.kernel.routes import RouteEntry
from reconciler.kernel.snapshot import Snapshot

NETLINK_ROUTE = 0
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_GETLINK, RTM_GETADDR, RTM_GETROUTE = 18, 22, 26
RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 20, 24
NLMSG = struct.Struct("=IHHII")
IFINFO = struct.Struct("=BxHiII")
IFADDR = struct.Struct("=BBBBI")
RTMSG = struct.Struct("=BBBBBBBBI")
RTA = struct.Struct("=HH")
U32 = struct.Struct("=I")
I32 = struct.Struct("=i")
NLA_TYPE_MASK = 0x3FFF
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")
BUFSIZE = 1 << 20


def _attrs(data: bytes, start: int, end: int) -> dict[int, bytes]:
    """Top-level netlink attributes in data[start:end] as {type: payload} (first one wins)."""
    out: dict[int, bytes] = {}
    while start + 4 <= end:
        length, kind = RTA.unpack_from(data, start)
        if length < 4:
            break
        kind &= NLA_TYPE_MASK
        if kind not in out:
            out[kind] = data[start + 4:start + length]
        start += (length + 3) & ~3
    return out


def _string(raw: bytes | None) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace") if raw else ""


def _u32(raw: bytes | None) -> int | None:
    return U32.unpack_from(raw)[0] if raw and len(raw) >= 4 else None


class _LazyLinkinfo:
    """Stands in for pyroute2's IFLA_LINKINFO attribute: decoded by pyroute2 on first get_attr."""

    __slots__ = ("_raw", "_decoded")

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._decoded: Any = None

    def get_attr(self, key: str) -> Any:
        if self._decoded is None:
            from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

            msg = ifinfmsg(self._raw)
            msg.decode()
            self._decoded = msg.get_attr("IFLA_LINKINFO")
        return self._decoded.get_attr(key) if self._decoded is not None else None


def _link(data: bytes, start: int, end: int) -> Link:
    _family, _type, index, flags, _change = IFINFO.unpack_from(data, start + 16)
    a = _attrs(data, start + 32, end)
    kind = slave_kind = ""
    info = a.get(18)  # IFLA_LINKINFO
    if info is not None:
        nested = _attrs(info, 0, len(info))
        kind = _string(nested.get(1))  # IFLA_INFO_KIND
        slave_kind = _string(nested.get(4))  # IFLA_INFO_SLAVE_KIND
    mac = a.get(1)  # IFLA_ADDRESS
    oper = a.get(16)  # IFLA_OPERSTATE
    mtu = _u32(a.get(4))
    netnsid = a.get(37)  # IFLA_LINK_NETNSID (s32)
    return Link(
        index=index,
        name=_string(a.get(3)),
        kind=kind,
        mac=":".join(f"{b:02x}" for b in mac) if mac else "",
        mtu=int(mtu or 0),
        up=bool(flags & IFF_UP),
        promisc=bool(flags & IFF_PROMISC),
        operstate=OPERSTATES[oper[0]] if oper and oper[0] < len(OPERSTATES) else "",
        master=_u32(a.get(10)),
        link=_u32(a.get(5)),
        link_netnsid=I32.unpack_from(netnsid)[0] if netnsid and len(netnsid) >= 4 else None,
        slave_kind=slave_kind,
        alias=_string(a.get(20)),
        linkinfo=_LazyLinkinfo(bytes(data[start:end])) if info is not None else None,
    )


def _ip(family: int, raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if family == socket.AF_INET else socket.AF_INET6, raw)


def _address(data: bytes, start: int, end: int) -> Address | None:
    family, prefixlen, flags, scope, index = IFADDR.unpack_from(data, start + 16)
    a = _attrs(data, start + 24, end)
    raw = a.get(1) or a.get(2)  # IFA_ADDRESS, IFA_LOCAL
    if family == socket.AF_INET and a.get(2):
        raw = a[2]  # for IPv4 point-to-point, IFA_LOCAL is ours
    if not raw:
        return None
    ext = _u32(a.get(8))  # IFA_FLAGS
    return Address(
        index=index,
        address=ipaddress.ip_interface(f"{_ip(family, raw)}/{prefixlen}"),
        scope=scope,
        flags=int(ext if ext is not None else flags),
    )


def _route(data: bytes, start: int, end: int) -> RouteEntry:
    family, dst_len, _src_len, _tos, table, proto, scope, rtype, _flags = RTMSG.unpack_from(data, start + 16)
    a = _attrs(data, start + 28, end)
    dst = a.get(1)
    any_ip = "0.0.0.0" if family == socket.AF_INET else "::"
    gateway, prefsrc, table_attr = a.get(5), a.get(7), _u32(a.get(15))
    return RouteEntry(
        dst=ipaddress.ip_network(f"{_ip(family, dst) if dst else any_ip}/{dst_len}", strict=False),
        gateway=ipaddress.ip_address(_ip(family, gateway)) if gateway else None,
        oif=_u32(a.get(4)),
        table=int(table_attr if table_attr is not None else table),
        scope=scope,
        priority=_u32(a.get(6)),
        prefsrc=ipaddress.ip_address(_ip(family, prefsrc)) if prefsrc else None,
        proto=proto,
        type=rtype,
    )


def _dump(sock: socket.socket, seq: int, msg_type: int, body: bytes) -> Iterator[tuple[bytes, int, int, int]]:
    """Send one dump request; yield (buffer, start, end, type) of every answer message."""
    sock.send(NLMSG.pack(NLMSG.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
    while True:
        data = sock.recv(BUFSIZE)
        if not data:
            return
        offset = 0
        while offset + NLMSG.size <= len(data):
            length, kind, _flags, rseq, _pid = NLMSG.unpack_from(data, offset)
            if length < NLMSG.size:
                return
            end = offset + length
            if rseq == seq:
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    code = -I32.unpack_from(data, offset + 16)[0]
                    if code:
                        raise nsmod.KernelError(code, f"netlink dump: {os.strerror(code)}")
                    return
                yield data, offset, end, kind
            offset = (end + 3) & ~3


def _socket(path: str | None) -> socket.socket:
    """A NETLINK_ROUTE socket created inside `path` (this thread enters it for the creation only)."""
    if path is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise nsmod.NetnsNotFound(path) from exc
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            nsmod._setns(target)
        except OSError as exc:
            raise nsmod.NetnsNotFound(path, f"not a network namespace ({exc})") from exc
        try:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        finally:
            nsmod._setns(own)
    finally:
        os.close(own)
        os.close(target)


def read(netns: str | None = None) -> Snapshot:
    """Links, addresses and routes (all tables) of `netns`: the same Snapshot `kernel.snapshot.read` returns."""
    path = nsmod.resolve(netns)
    if path is not None and nsmod.same_as_current(path):
        path = None
    sock = _socket(path)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFSIZE)
        sock.bind((0, 0))
        link_list = [_link(d, s, e) for d, s, e, k in _dump(sock, 1, RTM_GETLINK, IFINFO.pack(0, 0, 0, 0, 0))
                     if k == RTM_NEWLINK]
        addresses = [a for d, s, e, k in _dump(sock, 2, RTM_GETADDR, IFADDR.pack(0, 0, 0, 0, 0))
                     if k == RTM_NEWADDR and (a := _address(d, s, e)) is not None]
        routes: list[RouteEntry] = []
        for seq, fam in ((3, socket.AF_INET), (4, socket.AF_INET6)):
            body = RTMSG.pack(fam, 0, 0, 0, 0, 0, 0, 0, 0)
            routes.extend(_route(d, s, e) for d, s, e, k in _dump(sock, seq, RTM_GETROUTE, body) if k == RTM_NEWROUTE)
    finally:
        sock.close()
    links = tuple(sorted(link_list, key=lambda lk: lk.index))
    return Snapshot(netns, links, tuple(addresses), tuple(routes), {lk.name: lk for lk in links})


def prime(namespaces: Iterable[str | None]) -> dict[str | None, Snapshot | None]:
    """Read each namespace once into the current `snapshot.shared()` block (a no-op outside one).

    Returns {namespace: snapshot}, None for a namespace that is gone. Already cached ones are reused.
    """
    cache = snapmod._SHARED.get()
    out: dict[str | None, Snapshot | None] = {}
    for netns in dict.fromkeys(namespaces):
        key = nsmod.identity(netns)
        if key is None:
            out[netns] = None
            continue
        snap = cache.get(key) if cache is not None else None
        if snap is None:
            try:
                snap = read(netns)
            except OSError:
                out[netns] = None
                continue
            if cache is not None:
                cache[key] = snap
        out[netns] = snap
    return out


@contextlib.contextmanager
def shared(namespaces: Iterable[str | None] = ()) -> Iterator[dict[str | None, Snapshot | None]]:
    """`kernel.snapshot.shared()` with `namespaces` read up front by this module."""
    with snapmod.shared():
        yield prime(namespaces)
