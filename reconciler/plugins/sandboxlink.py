"""The common shape of the single-interface plugins (ipvlan, vlan, dummy, tap, host-device).

Each of them puts one link named CNI_IFNAME into the container, optionally runs IPAM and
configures the link from its result, and answers DEL/CHECK the same way: IPAM first, then the
link; CHECK compares prevResult with one snapshot of the container. The plugin modules keep
their own config models and link creation; this module holds the steps they share.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable

from reconciler.cni.args import CmdArgs
from reconciler.cni.invoke import delegate
from reconciler.cni.types import DNS, Interface, Result
from reconciler.errors import INTERNAL, INVALID_NETWORK_CONFIG, CNIError
from reconciler.kernel import links, sysctl
from reconciler.kernel import netns as nsmod
from reconciler.kernel.links import Link
from reconciler.kernel.snapshot import Snapshot, snapshot
from reconciler.plugins.iface import (
    check_interface_ips,
    check_link,
    check_routes,
    configure_iface,
    find_sandbox_iface,
    ipam_type,
    kernel_errors,
    prev_result,
    undo_quietly,
)

log = logging.getLogger(__name__)


def temp_name() -> str:
    """A random host-unique name for a link before it is renamed inside the container."""
    return "veth" + os.urandom(4).hex()


def require_netns(args: CmdArgs) -> None:
    """ADD and CHECK need an existing container namespace."""
    if not args.netns:
        raise CNIError(INTERNAL, "CNI_NETNS is required")
    if not nsmod.exists(args.netns):
        raise CNIError(INTERNAL, f"failed to open netns {args.netns!r}: no such network namespace")


def ensure_ifname_free(args: CmdArgs) -> None:
    """The spec: ADD MUST fail when CNI_IFNAME already exists in the container (checked before any change)."""
    if links.find(args.ifname, args.netns) is not None:
        raise CNIError(INTERNAL, f"interface {args.ifname!r} already exists in {args.netns}")


def master_mtu(master: str, netns: str | None, mtu: int) -> None:
    """`mtu` must be within [0, MTU of `master`] (the reference's check for vlan/ipvlan/macvlan)."""
    link = links.find(master, netns)
    if link is None:
        raise CNIError(INTERNAL, f"failed to lookup master {master!r}: link not found")
    if mtu < 0 or mtu > link.mtu:
        raise CNIError(INVALID_NETWORK_CONFIG, f"invalid MTU {mtu}, must be [0, master MTU({link.mtu})]")


def place(args: CmdArgs, create: Callable[[str], Link], undo: contextlib.ExitStack) -> Link:
    """Create the link under a temporary name (via `create(tmp)`, which puts it in the container)
    and rename it to CNI_IFNAME there; its deletion is registered on `undo`."""
    for _ in range(5):
        tmp = temp_name()
        try:
            create(tmp)
        except links.LinkExists:
            continue
        break
    else:
        raise CNIError(INTERNAL, "failed to find a free temporary link name")
    undo.callback(undo_quietly(_delete_either, tmp, args.ifname, args.netns))
    links.rename(tmp, args.ifname, args.netns)
    return links.get(args.ifname, args.netns)


def _delete_either(tmp: str, ifname: str, netns: str) -> None:
    if not links.delete(ifname, netns):
        links.delete(tmp, netns)


def run_ipam(args: CmdArgs, undo: contextlib.ExitStack) -> Result:
    """IPAM ADD, its DEL registered on `undo`; an empty answer is an error."""
    kind = ipam_type(args.config)
    result = delegate("ADD", kind, args)
    undo.callback(undo_quietly(delegate, "DEL", kind, args))
    if result is None or not result.ips:
        raise CNIError(INTERNAL, "IPAM plugin returned missing IP config")
    return result


def configure(args: CmdArgs, result: Result, link: Link, *, notify: bool = True,
              dns: DNS | None = None, no_dad: bool = False) -> Result:
    """Point every IP at interface 0 (the container link), apply addresses/routes, fill in the interface.

    `no_dad`: IPv6 duplicate address detection off (a tap has no carrier until its reader attaches,
    so DAD would never finish)."""
    result.cni_version = args.cni_version
    result.interfaces = [Interface(name=args.ifname, mac=link.mac, sandbox=args.netns)]
    for ipc in result.ips:
        ipc.interface = 0
    if result.ips:
        if notify:
            values = {f"net/ipv4/conf/{args.ifname}/arp_notify": 1}
            if any(ipc.version == 6 for ipc in result.ips):
                values[f"net/ipv6/conf/{args.ifname}/ndisc_notify"] = 1
        else:
            values = {}
        if no_dad and any(ipc.version == 6 for ipc in result.ips):
            values[f"net/ipv6/conf/{args.ifname}/accept_dad"] = 0
        if values:
            try:
                sysctl.write_many(values, args.netns)
            except (OSError, ValueError) as exc:
                log.debug("sysctls on %s: %s", args.ifname, exc)
        configure_iface(args.netns, args.ifname, result)
    else:
        links.set_up(args.ifname, args.netns)
    result.interfaces[0].mac = links.get(args.ifname, args.netns).mac
    if dns is not None and not dns.is_empty():
        result.dns = dns
    return result


def standard_add(args: CmdArgs, create: Callable[[str], Link], *, dns: DNS | None,
                 prior: Result | None = None, what: str, no_dad: bool = False, notify: bool = True) -> Result:
    """The whole ADD of a stacked link: checks, create+rename, IPAM (or `prior` IPs), configure.
    Anything created is removed again if a later step fails. `notify`: announce the addresses
    (arp_notify, ndisc_notify), as the reference's ipvlan and tap do and its vlan and dummy do not."""
    require_netns(args)
    with nsmod.session(), contextlib.ExitStack() as undo, kernel_errors(what):
        ensure_ifname_free(args)
        link = place(args, create, undo)
        if ipam_type(args.config):
            result = run_ipam(args, undo)
        elif prior is not None:
            result = prior.model_copy(deep=True)
        else:
            result = Result()
        result = configure(args, result, link, dns=dns, no_dad=no_dad, notify=notify)
        undo.pop_all()
    return result


def standard_del(args: CmdArgs, what: str) -> None:
    """IPAM DEL first, then the container link; a missing netns or link is success."""
    kind = ipam_type(args.config)
    if kind:
        delegate("DEL", kind, args)
    if not args.netns:
        return
    with nsmod.session(), kernel_errors(what):
        links.delete(args.ifname, args.netns)


def standard_check(args: CmdArgs, kind: str | None, what: str,
                   verify: Callable[[Snapshot, Link], None] | None = None) -> Result:
    """IPAM CHECK, then the container link (kind, MAC), addresses and routes against prevResult;
    `verify(snapshot, link)` adds the plugin's own checks (mode, VLAN id, master)."""
    ipam = ipam_type(args.config)
    if ipam:
        delegate("CHECK", ipam, args)
    prev = prev_result(args)
    assert prev is not None
    require_netns(args)
    with nsmod.session(), kernel_errors(what):
        snap = snapshot(args.netns)
        idx = find_sandbox_iface(prev, args.ifname, args.netns)
        link = check_link(snap, prev.interfaces[idx], kind=kind)
        if verify is not None:
            verify(snap, link)
        check_interface_ips(snap, args.ifname, prev)
        check_routes(snap, args.ifname, prev)
    return prev


def forward_status(args: CmdArgs) -> None:
    kind = ipam_type(args.config)
    if kind:
        delegate("STATUS", kind, args)


def forward_gc(args: CmdArgs) -> None:
    kind = ipam_type(args.config)
    if kind:
        delegate("GC", kind, args)
