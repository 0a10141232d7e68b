"""Routes and policy rules: add (idempotent), delete, list."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from dataclasses import dataclass

from reconciler import ipparse
from reconciler.kernel import netns as nsmod
from reconciler.kernel import rtnl
from reconciler.kernel.links import get as get_link
from reconciler.kernel.netns import KernelError, LinkNotFound

IPNetwork = ipparse.IPNetwork
IPAddress = ipparse.IPAddress

TABLE_MAIN = rtnl.RT_TABLE_MAIN
TABLE_LOCAL = 255
SCOPE_UNIVERSE = 0
SCOPE_LINK = 253
SCOPE_HOST = 254
SCOPE_NOWHERE = 255
RTN_UNICAST = rtnl.RTN_UNICAST
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


def list_routes(netns: str | None = None, *, family: int | None = None, table: int | None = TABLE_MAIN,
                oif: int | None = None) -> list[RouteEntry]:
    """Unicast routes of a namespace (table None: all tables; family None: IPv4 then IPv6, one dump)."""
    fam = {None: socket.AF_UNSPEC, 4: socket.AF_INET}.get(family, socket.AF_INET6)
    return [entry for entry in rtnl.dump_routes(netns, fam)
            if (table is None or entry.table == table) and (oif is None or entry.oif == oif)]


RTAX_MTU, RTAX_ADVMSS = 2, 8


def _body(dst: IPNetwork | str, gateway: IPAddress | str | None, ifname: str | None, netns: str | None,
          table: int | None, scope: int | None, metric: int | None, src: IPAddress | str | None,
          mtu: int | None = None, advmss: int | None = None, proto: int = 0, rtype: int = 0,
          index: int = 0) -> bytes:
    """The RTM_NEWROUTE / RTM_DELROUTE request for these fields (kernel.rtnl); `ifname` resolved
    here unless the caller knows its ifindex (`index`)."""
    metrics = {kind: value for kind, value in ((RTAX_MTU, mtu), (RTAX_ADVMSS, advmss)) if value}
    oif = (index or get_link(ifname, netns).index) if ifname else None
    return rtnl.route_body(
        ipaddress.ip_network(dst, strict=False), gateway=gateway or None,
        oif=oif, table=TABLE_MAIN if table is None else table,
        proto=proto, scope=scope or 0, rtype=rtype, priority=metric, prefsrc=src or None, metrics=metrics)


def add(dst: IPNetwork | str, *, gateway: IPAddress | str | None = None, ifname: str | None = None,
        netns: str | None = None, table: int | None = None, scope: int | None = None,
        metric: int | None = None, src: IPAddress | str | None = None, mtu: int | None = None,
        advmss: int | None = None, replace: bool = False, proto: int = RTPROT_BOOT, index: int = 0) -> bool:
    """Add a route (protocol `boot`, as `ip route add`; `index`: `ifname`'s ifindex, when the caller
    knows it); False if an identical route exists (EEXIST)."""
    body = _body(dst, gateway, ifname, netns, table, scope, metric, src, mtu, advmss, proto, RTN_UNICAST, index)
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


RULE_PRIORITY_DEFAULT = 32000  # what pyroute2 (the previous encoder) filled in for a rule without one


def list_rules(netns: str | None = None, family: int = 4) -> list[Rule]:
    """The policy rules of `family` (4 or 6), in the kernel's order."""
    out: list[Rule] = []
    for fam, dst_len, src_len, table, a in rtnl.dump_rules(netns, socket.AF_INET if family == 4 else socket.AF_INET6):
        network = ipaddress.IPv4Network if fam == socket.AF_INET else ipaddress.IPv6Network
        src, dst, table_attr = a.get(rtnl.FRA_SRC), a.get(rtnl.FRA_DST), rtnl.u32(a.get(rtnl.FRA_TABLE))
        out.append(Rule(
            family=4 if fam == socket.AF_INET else 6,
            priority=rtnl.u32(a.get(rtnl.FRA_PRIORITY)),
            table=int(table_attr if table_attr is not None else table),
            src=network((src, src_len), strict=False) if src else None,
            dst=network((dst, dst_len), strict=False) if dst else None,
            iifname=rtnl.string(a.get(rtnl.FRA_IIFNAME)) or None,
            oifname=rtnl.string(a.get(rtnl.FRA_OIFNAME)) or None,
        ))
    return out


def _rule_body(table: int, priority: int | None, src: IPNetwork | str | None, dst: IPNetwork | str | None,
               iifname: str | None, oifname: str | None, family: int) -> bytes:
    nets = {key: ipaddress.ip_network(value, strict=False) if value is not None else None
            for key, value in (("src", src), ("dst", dst))}
    version = next((net.version for net in nets.values() if net is not None), family)
    return rtnl.rule_body(socket.AF_INET if version == 4 else socket.AF_INET6, table,
                          priority=RULE_PRIORITY_DEFAULT if priority is None else priority,
                          src=nets["src"], dst=nets["dst"], iifname=iifname, oifname=oifname)


def rule_add(table: int, *, priority: int | None = None, src: IPNetwork | str | None = None,
             dst: IPNetwork | str | None = None, iifname: str | None = None, oifname: str | None = None,
             family: int = 4, netns: str | None = None) -> bool:
    """Add a policy rule `from SRC to DST lookup TABLE`; False if it exists."""
    try:
        rtnl.add_rule(netns, _rule_body(table, priority, src, dst, iifname, oifname, family))
    except rtnl.NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return False
        raise KernelError(exc.code, f"rule add table {table}: {os.strerror(exc.code)}") from exc
    return True


def rule_del(table: int, *, priority: int | None = None, src: IPNetwork | str | None = None,
             dst: IPNetwork | str | None = None, iifname: str | None = None, oifname: str | None = None,
             family: int = 4, netns: str | None = None) -> bool:
    """Delete a policy rule; False if none matched."""
    try:
        rtnl.del_rule(netns, _rule_body(table, priority, src, dst, iifname, oifname, family))
    except rtnl.NetlinkError as exc:
        if exc.code in (errno.ENOENT, errno.ESRCH):
            return False
        raise KernelError(exc.code, f"rule del table {table}: {os.strerror(exc.code)}") from exc
    return True
