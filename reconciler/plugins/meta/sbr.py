"""sbr: source-based routing for the container interface, as the reference plugin.

ADD (under a lock on the netns file): for each prevResult IP of CNI_IFNAME,
take the next routing table from 100 up that no rule or route uses, add the
rule `from <ip>/32 lookup <table>`, a default route via the IP's gateway in
that table, and copy there every main-table route of the interface whose
source or gateway is inside the IP's subnet (or that has neither); the copied
routes are then removed from the main table. With `table` set, only the rules
are added, all pointing at that table, and no route moves.

DEL removes the rules whose source is one of the interface's addresses (or,
when the interface is already gone, one of the prevResult IPs) and the routes
we put in their tables. CHECK (a no-op in the reference) verifies the rules
and each table's default route.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
from collections.abc import Iterator
from typing import Any

from pydantic import field_validator

from reconciler.cni.args import CmdArgs
from reconciler.cni.types import IPConfig, NetConf, Result
from reconciler.cni.version import parse_result
from reconciler.errors import INTERNAL, CNIError, config_error

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
FIRST_TABLE = 100
RESERVED_TABLES = (0, 253, 254, 255)


class SbrConf(NetConf):
    table: int | None = None

    @field_validator("table")
    @classmethod
    def _table(cls, v: int | None) -> int | None:
        if v is not None and (v <= 0 or v in RESERVED_TABLES or v >= 2**32):
            raise ValueError(f"must be a routing table id other than 0, 253, 254, 255; got {v}")
        return v


@contextlib.contextmanager
def _locked(netns: str) -> Iterator[None]:
    """Serialise sbr calls on one namespace (flock on its file, as the reference)."""
    try:
        fd = os.open(netns, os.O_RDONLY)
    except OSError as exc:
        raise CNIError(INTERNAL, f"failed to open netns {netns!r}", str(exc)) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _prev(conf: SbrConf) -> Result:
    if conf.prev_result is None:
        raise config_error("prevResult", "sbr must be called as a chained plugin")
    return parse_result(conf.prev_result, conf.cni_version)


def ip_configs(result: Result, ifname: str) -> list[IPConfig]:
    """prevResult IPs that belong to `ifname` (an IP with no interface index counts, as in 0.2.0 results)."""
    indexes = {i for i, iface in enumerate(result.interfaces) if iface.name == ifname}
    return [ip for ip in result.ips if ip.interface is None or ip.interface in indexes]


def _host_net(ip: IPConfig) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(f"{ip.iface.ip}/{ip.iface.max_prefixlen}")


def _used_tables(netns: str) -> set[int]:
    from reconciler.kernel import routes

    used = {r.table for r in routes.list_routes(netns, table=None)}
    for family in (4, 6):
        used.update(rule.table for rule in routes.list_rules(netns, family))
    return used


def rule_priority(netns: str, family: int) -> int:
    """The preference the kernel gives a rule added without one (the second rule's minus one).

    pyroute2 would otherwise send its own default (32000); the reference lets the kernel choose.
    """
    from reconciler.kernel import routes

    prios = [r.priority or 0 for r in routes.list_rules(netns, family)]
    return prios[1] - 1 if len(prios) > 1 and prios[1] > 0 else 0


def _add_rule(table: int, ip: IPConfig, netns: str, undo: contextlib.ExitStack) -> None:
    from reconciler.kernel import routes

    src = _host_net(ip)
    prio = rule_priority(netns, ip.version)
    if routes.rule_add(table, src=src, priority=prio, family=ip.version, netns=netns):
        undo.callback(routes.rule_del, table, src=src, priority=prio, family=ip.version, netns=netns)


def _copy_route(route: Any, table: int, ifname: str, netns: str) -> None:
    from reconciler.kernel import routes

    routes.add(route.dst, gateway=route.gateway, ifname=ifname, netns=netns, table=table, scope=route.scope,
               metric=route.priority, src=route.prefsrc, replace=True, proto=route.proto)


def _setup_tables(ips: list[IPConfig], ifname: str, netns: str, undo: contextlib.ExitStack) -> None:
    from reconciler.kernel import links, routes

    link = links.get(ifname, netns)
    main = [r for r in routes.list_routes(netns, oif=link.index) if r.type == routes.RTN_UNICAST]
    used = _used_tables(netns)
    table = FIRST_TABLE
    while table in used:
        table += 1
    for ip in ips:
        _add_rule(table, ip, netns, undo)
        if ip.gateway:
            default = "0.0.0.0/0" if ip.version == 4 else "::/0"
            routes.add(default, gateway=ip.gateway, ifname=ifname, netns=netns, table=table, replace=True)
            undo.callback(routes.delete, default, gateway=ip.gateway, ifname=ifname, netns=netns, table=table)
        for route in main:
            # as the reference: a route with neither source nor gateway is generic and goes to every
            # table, whatever its family (so an IPv4 table also gets fe80::/64)
            inside = (route.prefsrc is not None and route.prefsrc in ip.iface.network) or (
                route.gateway is not None and route.gateway in ip.iface.network)
            if inside or (route.prefsrc is None and route.gateway is None):
                _copy_route(route, table, ifname, netns)
                undo.callback(routes.delete, route.dst, gateway=route.gateway, ifname=ifname, netns=netns,
                              table=table, scope=route.scope, metric=route.priority)
        table += 1
    for route in main:  # all copies made: now the main table may lose them
        if routes.delete(route.dst, gateway=route.gateway, ifname=ifname, netns=netns, scope=route.scope,
                         metric=route.priority):
            undo.callback(_copy_route, route, routes.TABLE_MAIN, ifname, netns)


def add(args: CmdArgs) -> Result:
    """Per-IP routing tables and source rules; the result is prevResult, unchanged."""
    from reconciler.kernel.netns import KernelError

    conf = args.conf(SbrConf)
    result = _prev(conf)
    ips = ip_configs(result, args.ifname)
    if not ips:  # the reference's error too: source routing without a source address is a mistake
        raise CNIError(INTERNAL, f"sbr: no IP addresses supplied on interface {args.ifname} in prevResult")
    with _locked(args.netns), contextlib.ExitStack() as undo:
        try:
            if conf.table is not None:
                for ip in ips:
                    _add_rule(conf.table, ip, args.netns, undo)
            else:
                _setup_tables(ips, args.ifname, args.netns, undo)
        except KernelError as exc:
            raise CNIError(INTERNAL, f"sbr: failed to set up source routing for {args.ifname}", str(exc)) from exc
        undo.pop_all()
    return result


def _our_rules(args: CmdArgs) -> tuple[list[Any], int | None]:
    """Rules whose source is one of the interface's addresses (or prevResult's when it is gone)."""
    from reconciler.kernel import addrs, links, routes

    link = links.find(args.ifname, args.netns)
    if link is not None:
        sources = {ipaddress.ip_network(f"{a.address.ip}/{a.address.max_prefixlen}")
                   for a in addrs.list_addrs(args.netns, args.ifname)}
    else:
        prev = args.config.get("prevResult")
        try:
            sources = {_host_net(ip) for ip in ip_configs(parse_result(prev), args.ifname)} if prev else set()
        except CNIError:
            sources = set()
    found = [rule for family in (4, 6) for rule in routes.list_rules(args.netns, family)
             if rule.src is not None and rule.src in sources and rule.dst is None]
    return found, link.index if link is not None else None


def delete(args: CmdArgs) -> None:
    """Remove our rules and what we put in their tables; a missing netns or interface is fine."""
    from reconciler.kernel import netns as nsmod
    from reconciler.kernel import routes

    if not args.netns or not nsmod.exists(args.netns):
        return
    table_opt = args.config.get("table")
    with _locked(args.netns):
        rules, oif = _our_rules(args)
        for rule in rules:
            routes.rule_del(rule.table, priority=rule.priority, src=rule.src, family=rule.family, netns=args.netns)
            if oif is None or rule.table == table_opt:
                continue  # never flush a table the user named: its routes are theirs
            for route in routes.list_routes(args.netns, table=rule.table, oif=oif):
                routes.delete(route.dst, gateway=route.gateway, netns=args.netns, table=rule.table,
                              scope=route.scope, metric=route.priority)


def check(args: CmdArgs) -> None:
    """Each IP of the interface has a source rule; without `table`, its table has the default route."""
    from reconciler.kernel import routes
    from reconciler.plugins.iface import kernel_errors

    conf = args.conf(SbrConf)
    result = _prev(conf)
    with kernel_errors("sbr"):
        rules = [r for family in (4, 6) for r in routes.list_rules(args.netns, family)]
        for ip in ip_configs(result, args.ifname):
            src = _host_net(ip)
            mine = [r for r in rules if r.src == src and r.dst is None]
            if conf.table is not None:
                mine = [r for r in mine if r.table == conf.table]
            if not mine:
                raise CNIError(INTERNAL, f"sbr: no rule 'from {src}' for {args.ifname}")
            if conf.table is None and ip.gateway:
                table = mine[0].table
                defaults = [r for r in routes.list_routes(args.netns, family=ip.version, table=table)
                            if r.dst.prefixlen == 0 and str(r.gateway) == ip.gateway]
                if not defaults:
                    raise CNIError(INTERNAL, f"sbr: table {table} has no default route via {ip.gateway}")
