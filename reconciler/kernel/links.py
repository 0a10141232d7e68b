"""Network links: read, create (veth, bridge, macvlan, ipvlan, vlan, dummy, tap), change, delete.

Plain names, indexes and strings in; `Link` records out. Creation is
errno-idempotent only where the caller asks (`ensure_bridge`); a plain
`create_*` raises `LinkExists` so callers can tell "mine" from "someone's".
Deletion of something already gone is success.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.kernel import netns as nsmod
from reconciler.kernel import rtnl
from reconciler.kernel.netns import KernelError, LinkNotFound

IFF_UP = 0x1
IFF_PROMISC = 0x100
IFF_LOWER_UP = 0x10000
MACVLAN_MODE_BITS = {name: bit for bit, name in rtnl.MACVLAN_MODE_NAMES.items()}
MACVLAN_MODES = tuple(MACVLAN_MODE_BITS)  # private, vepa, bridge, passthru, source
SAME = "<same netns>"  # default target: create the link where its parent is


class LinkExists(KernelError):
    def __init__(self, name: str, netns: str | None) -> None:
        super().__init__(errno.EEXIST, f"link {name!r} already exists in {netns or 'current netns'}")
        self.name = name


@dataclass(frozen=True)
class Link:
    """One interface as the kernel reports it."""

    index: int
    name: str
    kind: str  # "" for plain devices (lo, physical)
    mac: str
    mtu: int
    up: bool
    promisc: bool
    operstate: str
    master: int | None = None  # ifindex of the master (bridge, vrf, bond)
    link: int | None = None  # IFLA_LINK: veth peer / macvlan parent ifindex
    link_netnsid: int | None = None  # set when `link` lives in another namespace
    slave_kind: str = ""
    alias: str = ""
    carrier: bool = False  # IFF_LOWER_UP: set at once with the carrier, where operstate lags behind it
    linkinfo: Any = field(default=None, compare=False, repr=False)  # raw IFLA_LINKINFO, decoded on demand

    @functools.cached_property
    def info(self) -> Mapping[str, Any]:
        """IFLA_INFO_DATA (kind-specific attributes), decoded on first use: it is the costly part of a dump."""
        return self.linkinfo.kind_data() if self.linkinfo is not None else {}

    @functools.cached_property
    def slave_info(self) -> Mapping[str, Any]:
        """IFLA_INFO_SLAVE_DATA (bridge-port flags, ...)."""
        return self.linkinfo.kind_data(port=True) if self.linkinfo is not None else {}

    @property
    def macvlan_mode(self) -> str:
        return str(self.info.get("IFLA_MACVLAN_MODE", ""))

    @property
    def hairpin(self) -> bool:
        return bool(self.slave_info.get("IFLA_BRPORT_MODE", 0))

    @property
    def isolated(self) -> bool:
        return bool(self.slave_info.get("IFLA_BRPORT_ISOLATED", 0))


def list_links(netns: str | None = None) -> list[Link]:
    """All links of a namespace, sorted by index."""
    return sorted(rtnl.dump_links(netns), key=lambda link: link.index)


def find(name: str, netns: str | None = None) -> Link | None:
    """The link called `name`, or None."""
    return _lookup(netns, f"get link {name!r}", name=name)


def get(name: str, netns: str | None = None) -> Link:
    """The link called `name`; raises LinkNotFound."""
    link = find(name, netns)
    if link is None:
        raise LinkNotFound(name, netns)
    return link


def by_index(index: int, netns: str | None = None) -> Link | None:
    return _lookup(netns, f"get link #{index}", index=index)


def _lookup(netns: str | None, what: str, name: str | None = None, index: int = 0) -> Link | None:
    try:
        return rtnl.get_link(netns, name=name, index=index)  # type: ignore[no-any-return]
    except rtnl.NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise KernelError(exc.code, f"{what}: {os.strerror(exc.code)}") from exc


@contextlib.contextmanager
def _errors(netns: str | None, what: str, name: str, creating: bool = False) -> Iterator[None]:
    """Map a refused rtnl request to our exceptions, as `_call` does for pyroute2's."""
    try:
        yield
    except rtnl.NetlinkError as exc:
        if exc.code == errno.EEXIST:
            raise LinkExists(name, netns) from exc
        if exc.code == errno.ENODEV and not creating:
            raise LinkNotFound(name, netns) from exc
        raise KernelError(exc.code, f"{what} {name!r}: {os.strerror(exc.code)}") from exc


def _call(netns: str | None, what: str, name: str, command: str, **spec: Any) -> None:
    """Run one RTM_*LINK request, mapping errno to our exceptions."""
    from pyroute2 import NetlinkError

    with nsmod.ipr(netns) as ipr:
        try:
            ipr.link(command, **spec)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                raise LinkExists(name, netns) from exc
            if exc.code == errno.ENODEV and command != "add":
                raise LinkNotFound(name, netns) from exc
            raise KernelError(exc.code, f"{what} {name!r}: {os.strerror(exc.code)}") from exc


def _index(name: str, netns: str | None) -> int:
    return get(name, netns).index


def create_veth(
    name: str,
    peer: str,
    *,
    netns: str | None = None,
    peer_netns: str | None = None,
    mtu: int | None = None,
    mac: str | None = None,
    peer_mac: str | None = None,
    master: int = 0,
    up: bool = False,
) -> tuple[Link, Link]:
    """A veth pair: `name` in `netns`, `peer` in `peer_netns`. Returns (link, peer).

    `name` can be created up and enslaved to `master` (an ifindex) in the same request. The returned
    `link` is the kernel's announcement of its creation where it echoes one: its index, name and MAC
    are final, its `master` may not be set yet."""
    fd = None
    if not nsmod.same(netns, peer_netns):
        fd = _open_netns(peer_netns)
    try:
        with _errors(netns, "create veth", name, creating=True):
            created = rtnl.create_veth(netns, name, peer, peer_netns_fd=fd, mtu=mtu, mac=mac, peer_mac=peer_mac,
                                       master=master, up=up)
    finally:
        if fd is not None:
            os.close(fd)
    return created or get(name, netns), get(peer, peer_netns)


def _open_netns(netns: str | None) -> int:
    path = nsmod.resolve(netns) or "/proc/self/ns/net"
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise nsmod.NetnsNotFound(path) from exc


def _create_on_parent(
    kind: str,
    name: str,
    parent: str,
    *,
    netns: str | None,
    target_netns: str | None,
    mtu: int | None,
    mac: str | None,
    data: dict[str, int],
) -> Link:
    """Create a link stacked on `parent` (in `netns`) directly in `target_netns` (one request);
    `data`: the kind's attributes by pyroute2's names (rtnl.KIND_DATA)."""
    info = rtnl.encode_kind_data(rtnl.KIND_DATA, kind, data)
    lower = _index(parent, netns)
    if target_netns == SAME:
        target_netns = netns
    fd = None if nsmod.same(netns, target_netns) else _open_netns(target_netns)
    try:
        with _errors(netns, f"create {kind}", name, creating=True):
            rtnl.create_link(netns, name, kind, mtu=mtu, mac=mac, info_data=info, lower=lower, net_ns_fd=fd)
    finally:
        if fd is not None:
            os.close(fd)
    return get(name, target_netns)


def create_macvlan(
    name: str, parent: str, mode: str = "bridge", *, netns: str | None = None,
    target_netns: str | None = SAME, mtu: int | None = None, mac: str | None = None,
) -> Link:
    """A macvlan on `parent` (modes private, vepa, bridge, passthru), created directly in `target_netns`."""
    if mode not in MACVLAN_MODES:
        raise KernelError(errno.EINVAL, f"unknown macvlan mode {mode!r}")
    return _create_on_parent("macvlan", name, parent, netns=netns, target_netns=target_netns, mtu=mtu,
                             mac=mac, data={"IFLA_MACVLAN_MODE": MACVLAN_MODE_BITS[mode]})


def create_ipvlan(
    name: str, parent: str, mode: str = "l2", *, netns: str | None = None,
    target_netns: str | None = SAME, mtu: int | None = None,
) -> Link:
    modes = {"l2": 0, "l3": 1, "l3s": 2}
    if mode not in modes:
        raise KernelError(errno.EINVAL, f"unknown ipvlan mode {mode!r}")
    return _create_on_parent("ipvlan", name, parent, netns=netns, target_netns=target_netns, mtu=mtu,
                             mac=None, data={"IFLA_IPVLAN_MODE": modes[mode]})


def create_vlan(
    name: str, parent: str, vlan_id: int, *, netns: str | None = None,
    target_netns: str | None = SAME, mtu: int | None = None,
) -> Link:
    return _create_on_parent("vlan", name, parent, netns=netns, target_netns=target_netns, mtu=mtu,
                             mac=None, data={"IFLA_VLAN_ID": vlan_id})


def create_dummy(name: str, *, netns: str | None = None, mtu: int | None = None,
                 mac: str | None = None) -> Link:
    with _errors(netns, "create dummy", name, creating=True):
        rtnl.create_link(netns, name, "dummy", mtu=mtu, mac=mac)
    return get(name, netns)


def create_vrf(name: str, table: int, *, netns: str | None = None) -> Link:
    """A VRF device bound to routing table `table` (EOPNOTSUPP: the kernel has no `vrf` kind)."""
    info = rtnl.encode_kind_data(rtnl.KIND_DATA, "vrf", {"IFLA_VRF_TABLE": table})
    with _errors(netns, "create vrf", name, creating=True):
        rtnl.create_link(netns, name, "vrf", info_data=info)
    return get(name, netns)


def delete(name: str, netns: str | None = None) -> bool:
    """Delete `name`; True if it existed. A missing link or namespace is success."""
    try:
        with _errors(netns, "delete", name):
            rtnl.delete_link(netns, name=name)
    except LinkNotFound:
        return False
    except nsmod.NetnsNotFound:
        return False
    return True


def set_link(name: str, netns: str | None = None, **attrs: Any) -> None:
    """Low-level RTM_SETLINK by name (pyroute2 attribute names: mtu, address, master, state, ...)."""
    target = attrs.pop("net_ns_fd", None)
    encoded = rtnl.link_attrs(attrs)
    if encoded is None:  # an attribute only pyroute2 knows how to encode
        if target is not None:
            attrs["net_ns_fd"] = target
        _call(netns, "set", name, "set", index=_index(name, netns), **attrs)
        return
    # addressed by name (the kernel looks it up: one request, not two) unless the name itself changes
    index, by_name = (_index(name, netns), None) if "ifname" in attrs else (0, name)
    fd = _open_netns(target) if target is not None else None
    try:
        with _errors(netns, "set", name):
            rtnl.set_link(netns, index, *encoded, net_ns_fd=fd, name=by_name)
    finally:
        if fd is not None:
            os.close(fd)


def set_up(name: str, netns: str | None = None) -> None:
    set_link(name, netns, state="up")


def set_down(name: str, netns: str | None = None) -> None:
    set_link(name, netns, state="down")


def set_mtu(name: str, mtu: int, netns: str | None = None) -> None:
    set_link(name, netns, mtu=mtu)


def set_mac(name: str, mac: str, netns: str | None = None) -> None:
    set_link(name, netns, address=mac)


def random_mac() -> str:
    """A random unicast, locally administered MAC (the kernel's eth_random_addr)."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


def set_master(name: str, master: str | None, netns: str | None = None) -> None:
    """Enslave `name` to `master` (None: release)."""
    set_link(name, netns, master=_index(master, netns) if master else 0)


def set_promisc(name: str, on: bool, netns: str | None = None) -> None:
    link = get(name, netns)
    flags = IFF_PROMISC if on else 0
    with _errors(netns, "set promisc", name):
        rtnl.set_link(netns, link.index, flags, IFF_PROMISC, b"")


def set_alias(name: str, alias: str, netns: str | None = None) -> None:
    set_link(name, netns, ifalias=alias)


def move(name: str, target_netns: str | None, *, netns: str | None = None, new_name: str | None = None) -> None:
    """Move `name` into `target_netns` (None: the current namespace), optionally renaming it in the same call."""
    target = nsmod.resolve(target_netns) or "/proc/self/ns/net"
    spec: dict[str, Any] = {"net_ns_fd": target}
    if new_name:
        spec["ifname"] = new_name
    set_link(name, netns, **spec)


def rename(name: str, new_name: str, netns: str | None = None) -> None:
    """Rename (the link is brought down first if needed, as the kernel requires)."""
    link = get(name, netns)
    if link.up:
        set_down(name, netns)
    set_link(name, netns, ifname=new_name)


def wait_oper_up(name: str, netns: str | None = None,
                 delays_ms: tuple[int, ...] = (0, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 1000)) -> bool:
    """Poll until the link's operstate is UP; False if it never got there."""
    for delay in delays_ms:
        if delay:
            time.sleep(delay / 1000)
        link = find(name, netns)
        if link is not None and link.operstate == "UP":
            return True
    return False


def peer_index(name: str, netns: str | None = None) -> int | None:
    """The ifindex of a veth's peer (in the peer's own namespace)."""
    link = get(name, netns)
    if link.kind != "veth":
        raise KernelError(errno.EINVAL, f"{name!r} is not a veth")
    return link.link
