"""Routes and policy rules: add (idempotent), delete, list, look up."""

from __future__ import annotations

import errno
import ipaddress
import os
from dataclasses import dataclass
from typing import Any

from reconciler.kernel import netns as nsmod
from reconciler.kernel import rtnl
from reconciler.kernel.links import get as get_link
from reconciler.kernel.netns import KernelError, LinkNotFound

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

TABLE_MAIN = 254
TABLE_LOCAL = 255
SCOPE_UNIVERSE = 0
SCOPE_LINK = 253
SCOPE_HOST = 254
SCOPE_NOWHERE = 255
RTN_UNICAST = 1
RTPROT_BOOT = 3
RTPROT_KERNEL = 2


@dataclass(frozen=True)
class RouteEntry:
    dst: IPNetwork
    gateway: IPAddress | None
    oif: int | None
    table: int
    scope: int
    priority: int | None
    prefsrc: IPAddress | None
    proto: int
    type: int

    @property
    def family(self) -> int:
        return self.dst.version


def _ip(value: Any) -> IPAddress | None:
    return ipaddress.ip_address(value) if value else None


def from_msg(msg: Any) -> RouteEntry:
    family = 4 if msg["family"] == 2 else 6
    dst = msg.get_attr("RTA_DST")
    dst_net = ipaddress.ip_network(f"{dst or ('0.0.0.0' if family == 4 else '::')}/{msg['dst_len']}", strict=False)
    table = msg.get_attr("RTA_TABLE")
    return RouteEntry(
        dst=dst_net,
        gateway=_ip(msg.get_attr("RTA_GATEWAY")),
        oif=msg.get_attr("RTA_OIF"),
        table=int(table if table is not None else msg["table"]),
        scope=int(msg["scope"]),
        priority=msg.get_attr("RTA_PRIORITY"),
        prefsrc=_ip(msg.get_attr("RTA_PREFSRC")),
        proto=int(msg["proto"]),
        type=int(msg["type"]),
    )


def list_routes(netns: str | None = None, *, family: int | None = None, table: int | None = TABLE_MAIN,
                oif: int | None = None) -> list[RouteEntry]:
    """Unicast routes of a namespace (table None: all tables)."""
    import socket

    families = [socket.AF_INET, socket.AF_INET6] if family is None else [
        socket.AF_INET if family == 4 else socket.AF_INET6]
    out: list[RouteEntry] = []
    for fam in families:
        out.extend(entry for entry in rtnl.dump_routes(netns, fam)
                   if (table is None or entry.table == table) and (oif is None or entry.oif == oif))
    return out


RTAX_MTU, RTAX_ADVMSS = 2, 8


def _body(dst: IPNetwork | str, gateway: IPAddress | str | None, ifname: str | None, netns: str | None,
          table: int | None, scope: int | None, metric: int | None, src: IPAddress | str | None,
          mtu: int | None = None, advmss: int | None = None, proto: int = 0, rtype: int = 0) -> bytes:
    """The RTM_NEWROUTE / RTM_DELROUTE request for these fields (kernel.rtnl); `ifname` resolved here."""
    metrics = {kind: value for kind, value in ((RTAX_MTU, mtu), (RTAX_ADVMSS, advmss)) if value}
    return rtnl.route_body(
        ipaddress.ip_network(dst, strict=False), gateway=gateway or None,
        oif=get_link(ifname, netns).index if ifname else None, table=TABLE_MAIN if table is None else table,
        proto=proto, scope=scope or 0, rtype=rtype, priority=metric, prefsrc=src or None, metrics=metrics)


def add(dst: IPNetwork | str, *, gateway: IPAddress | str | None = None, ifname: str | None = None,
        netns: str | None = None, table: int | None = None, scope: int | None = None,
        metric: int | None = None, src: IPAddress | str | None = None, mtu: int | None = None,
        advmss: int | None = None, replace: bool = False, proto: int = RTPROT_BOOT) -> bool:
    """Add a route (protocol `boot`, as `ip route add`); False if an identical route exists (EEXIST)."""
    body = _body(dst, gateway, ifname, netns, table, scope, metric, src, mtu, advmss, proto, RTN_UNICAST)
    try:
        rtnl.add_route(netns, body, replace=replace)
    except rtnl.NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return False
        if exc.code == errno.ENODEV and ifname:
            raise LinkNotFound(ifname, netns) from exc
        via = f" via {gateway}" if gateway else ""
        dev = f" dev {ifname}" if ifname else ""
        raise KernelError(exc.code, f"route add {dst}{via}{dev}: {os.strerror(exc.code)}") from exc
    return True


def delete(dst: IPNetwork | str, *, gateway: IPAddress | str | None = None, ifname: str | None = None,
           netns: str | None = None, table: int | None = None, scope: int | None = None,
           metric: int | None = None) -> bool:
    """Delete a route; False if it (or its link / namespace) is already gone."""
    try:
        # scope "nowhere", protocol and type 0 match any, as `ip route del` sends them
        body = _body(dst, gateway, ifname, netns, table, SCOPE_NOWHERE if scope is None else scope, metric, None)
        rtnl.del_route(netns, body)
    except (LinkNotFound, nsmod.NetnsNotFound):
        return False
    except rtnl.NetlinkError as exc:
        if exc.code in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
            return False
        raise KernelError(exc.code, f"route del {dst}: {os.strerror(exc.code)}") from exc
    return True


def lookup(dst: IPAddress | str, netns: str | None = None) -> RouteEntry | None:
    """The route the kernel would use for `dst` (`ip route get`); None if unreachable."""
    from pyroute2 import NetlinkError

    addr = ipaddress.ip_address(dst)
    with nsmod.ipr(netns) as ipr:
        try:
            msgs = ipr.route("get", dst=str(addr), family=2 if addr.version == 4 else 10)
        except NetlinkError as exc:
            if exc.code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ESRCH):
                return None
            raise KernelError(exc.code, f"route get {addr}: {os.strerror(exc.code)}") from exc
    return from_msg(msgs[0]) if msgs else None


def default_route_ifname(netns: str | None = None, family: int = 4) -> str | None:
    """The link of the first default route of `family` in the main table (macvlan's default master)."""
    from reconciler.kernel.links import by_index

    for entry in list_routes(netns, family=family):
        if entry.dst.prefixlen == 0 and entry.oif:
            link = by_index(entry.oif, netns)
            if link is not None:
                return link.name
    return None


# --- policy rules (sbr) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    family: int
    priority: int | None
    table: int
    src: IPNetwork | None
    dst: IPNetwork | None
    iifname: str | None
    oifname: str | None


def _rule_from_msg(msg: Any) -> Rule:
    family = 4 if msg["family"] == 2 else 6

    def net(attr: str, length: int) -> IPNetwork | None:
        value = msg.get_attr(attr)
        return ipaddress.ip_network(f"{value}/{length}", strict=False) if value else None

    table = msg.get_attr("FRA_TABLE")
    return Rule(family, msg.get_attr("FRA_PRIORITY"), int(table if table is not None else msg["table"]),
                net("FRA_SRC", msg["src_len"]), net("FRA_DST", msg["dst_len"]),
                msg.get_attr("FRA_IIFNAME"), msg.get_attr("FRA_OIFNAME"))


def list_rules(netns: str | None = None, family: int = 4) -> list[Rule]:
    import socket

    with nsmod.ipr(netns) as ipr:
        msgs = ipr.rule("dump", family=socket.AF_INET if family == 4 else socket.AF_INET6)
        return [_rule_from_msg(m) for m in msgs]


def _rule_spec(table: int, priority: int | None, src: IPNetwork | str | None, dst: IPNetwork | str | None,
               iifname: str | None, oifname: str | None, family: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"table": table, "family": 2 if family == 4 else 10, "action": "FR_ACT_TO_TBL"}
    if priority is not None:
        spec["priority"] = priority
    for key, value in (("src", src), ("dst", dst)):
        if value is not None:
            net = ipaddress.ip_network(value, strict=False)
            spec[key] = str(net.network_address)
            spec[f"{key}_len"] = net.prefixlen
            spec["family"] = 2 if net.version == 4 else 10
    if iifname:
        spec["iifname"] = iifname
    if oifname:
        spec["oifname"] = oifname
    return spec


def rule_add(table: int, *, priority: int | None = None, src: IPNetwork | str | None = None,
             dst: IPNetwork | str | None = None, iifname: str | None = None, oifname: str | None = None,
             family: int = 4, netns: str | None = None) -> bool:
    """Add a policy rule `from SRC to DST lookup TABLE`; False if it exists."""
    from pyroute2 import NetlinkError

    spec = _rule_spec(table, priority, src, dst, iifname, oifname, family)
    with nsmod.ipr(netns) as ipr:
        try:
            ipr.rule("add", **spec)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False
            raise KernelError(exc.code, f"rule add table {table}: {os.strerror(exc.code)}") from exc
    return True


def rule_del(table: int, *, priority: int | None = None, src: IPNetwork | str | None = None,
             dst: IPNetwork | str | None = None, iifname: str | None = None, oifname: str | None = None,
             family: int = 4, netns: str | None = None) -> bool:
    """Delete a policy rule; False if none matched."""
    from pyroute2 import NetlinkError

    spec = _rule_spec(table, priority, src, dst, iifname, oifname, family)
    with nsmod.ipr(netns) as ipr:
        try:
            ipr.rule("del", **spec)
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.ESRCH):
                return False
            raise KernelError(exc.code, f"rule del table {table}: {os.strerror(exc.code)}") from exc
    return True
