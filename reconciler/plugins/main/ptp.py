"""ptp: a routed veth pair; the host end holds the gateway as /32 (/128) and a host route to the container."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from typing import Any

from pydantic import field_validator

from reconciler.cni.args import CmdArgs
from reconciler.cni.invoke import delegate
from reconciler.cni.model import CNIModel
from reconciler.cni.types import DNS, Interface, Result
from reconciler.cni.version import ALL_VERSIONS
from reconciler.errors import INTERNAL, CNIError
from reconciler.kernel import addrs, links, routes, sysctl
from reconciler.kernel import netns as nsmod
from reconciler.kernel.snapshot import snapshot
from reconciler.plugins import hostveth, ipmasq
from reconciler.plugins.fields import MasqBackend, Mtu
from reconciler.plugins.iface import (
    check_interface_ips,
    check_link,
    check_routes,
    configure_iface,
    container_addresses,
    find_sandbox_iface,
    kernel_errors,
    prev_result,
    undo_quietly,
)

log = logging.getLogger(__name__)
SUPPORTED_VERSIONS = ALL_VERSIONS


class PtpConf(CNIModel):
    ip_masq: bool = False
    ip_masq_backend: MasqBackend = None
    mtu: Mtu = 0
    ipam: dict[str, Any]
    dns: DNS | None = None

    @field_validator("ipam")
    @classmethod
    def _ipam(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(v, dict) or not v.get("type"):
            raise ValueError("ptp needs an IPAM configuration with a type")
        return v


def _host_len(version: int) -> int:
    return 32 if version == 4 else 128


def _container_routes(netns: str, ifname: str, result: Result) -> None:
    """Replace each subnet route by `gw/32 scope link` + `subnet via gw`, both with the container IP as source."""
    for ipc in result.ips:
        if not ipc.gateway:
            continue
        iface, gw, bits = ipc.iface, ipc.gateway, _host_len(ipc.version)
        routes.delete(iface.network, ifname=ifname, netns=netns)
        routes.add(f"{gw}/{bits}", ifname=ifname, netns=netns, scope=routes.SCOPE_LINK, src=iface.ip)
        routes.add(iface.network, gateway=gw, ifname=ifname, netns=netns, src=iface.ip)


def _host_side(host_veth: str, result: Result, host: str | None) -> None:
    for ipc in result.ips:
        bits = _host_len(ipc.version)
        if ipc.gateway:
            addrs.add(host_veth, f"{ipc.gateway}/{bits}", host)
        routes.add(f"{ipc.iface.ip}/{bits}", ifname=host_veth, netns=host, scope=routes.SCOPE_HOST)


def add(args: CmdArgs) -> Result:
    conf = args.conf(PtpConf)
    host = args.host_netns
    ipam_type = str(conf.ipam["type"])
    with nsmod.session(), contextlib.ExitStack() as undo, kernel_errors("ptp"):
        if links.find(args.ifname, args.netns) is not None:  # fail before reserving an address
            raise CNIError(INTERNAL, f"container veth name provided ({args.ifname}) already exists")
        result = delegate("ADD", ipam_type, args)
        undo.callback(undo_quietly(delegate, "DEL", ipam_type, args))
        if result is None or not result.ips:
            raise CNIError(INTERNAL, "IPAM plugin returned missing IP config")
        result.cni_version = args.cni_version
        for ipc in result.ips:
            if not ipc.gateway:
                raise CNIError(INTERNAL, f"IPAM result for {ipc.address} has no gateway (ptp needs one)")
        versions = {ipc.version for ipc in result.ips}
        sysctl.enable_forwarding(4 in versions, 6 in versions, host)

        host_veth, _ = hostveth.setup_veth(args.ifname, netns=args.netns, host_netns=host, mtu=conf.mtu or None)
        undo.callback(undo_quietly(links.delete, host_veth.name, host))
        for ipc in result.ips:
            ipc.interface = 1
        result.interfaces = [Interface(name=host_veth.name), Interface(name=args.ifname, sandbox=args.netns)]
        configure_iface(args.netns, args.ifname, result)
        _container_routes(args.netns, args.ifname, result)
        _host_side(host_veth.name, result, host)

        if conf.ip_masq:
            addresses = [ipc.iface for ipc in result.ips]
            ipmasq.setup(args.network_name, args.container_id, args.ifname, addresses, conf.ip_masq_backend, host)
            undo.callback(undo_quietly(ipmasq.teardown, args.network_name, args.container_id, args.ifname,
                                       addresses, host))
        if conf.dns is not None and not conf.dns.is_empty():
            result.dns = conf.dns
        result.interfaces = [
            Interface(name=host_veth.name, mac=links.get(host_veth.name, host).mac),
            Interface(name=args.ifname, mac=links.get(args.ifname, args.netns).mac, sandbox=args.netns),
        ]
        undo.pop_all()
    return result


def delete(args: CmdArgs) -> None:
    conf = args.conf(PtpConf)
    prev = prev_result(args, required=False)
    delegate("DEL", str(conf.ipam["type"]), args)
    with nsmod.session(), kernel_errors("ptp"):
        found: list[Any] = []
        if args.netns:
            _, found = hostveth.delete_container_link(args.ifname, args.netns)
        if conf.ip_masq:
            addresses = found or container_addresses(prev, args.ifname)
            if addresses:
                ipmasq.teardown(args.network_name, args.container_id, args.ifname, addresses, args.host_netns)


def check(args: CmdArgs) -> None:
    conf = args.conf(PtpConf)
    delegate("CHECK", str(conf.ipam["type"]), args)
    prev = prev_result(args)
    assert prev is not None
    host = args.host_netns
    with nsmod.session(), kernel_errors("ptp"):
        cont_snap = snapshot(args.netns)
        host_snap = snapshot(host)
        idx = find_sandbox_iface(prev, args.ifname, args.netns)
        cont = check_link(cont_snap, prev.interfaces[idx], kind="veth")
        check_interface_ips(cont_snap, args.ifname, prev)
        check_routes(cont_snap, args.ifname, prev)
        for ipc in prev.ips:
            if ipc.gateway is None:
                continue
            gw = ipaddress.ip_address(ipc.gateway)
            if not any(r.dst.prefixlen == _host_len(ipc.version) and r.dst.network_address == gw
                       for r in cont_snap.routes_of(args.ifname)):
                raise CNIError(INTERNAL, f"route {gw}/{_host_len(ipc.version)} dev {args.ifname} not found")
        for iface in prev.interfaces:
            if iface.sandbox or iface.name == args.ifname:
                continue
            live = host_snap.link(iface.name)
            if live is not None and live.kind != "veth":
                continue  # appended by a later plugin of the chain (bandwidth's ifb, ...)
            hv = check_link(host_snap, iface, kind="veth")
            if hv.link != cont.index:
                raise CNIError(INTERNAL, f"host veth {iface.name!r} is not the peer of {args.ifname!r}")
            for ipc in prev.ips:
                bits = _host_len(ipc.version)
                if ipc.gateway and not host_snap.has_address(iface.name, ipaddress.ip_interface(f"{ipc.gateway}/{bits}")):
                    raise CNIError(INTERNAL, f"host veth {iface.name!r} lacks gateway address {ipc.gateway}/{bits}")
                host_route = ipaddress.ip_network(f"{ipc.iface.ip}/{bits}")
                if not any(r.dst == host_route for r in host_snap.routes_of(iface.name)):
                    raise CNIError(INTERNAL, f"host route {host_route} dev {iface.name} not found")
    if conf.ip_masq and prev.ips:
        ipmasq.check(args.network_name, args.container_id, args.ifname, container_addresses(prev, args.ifname),
                     conf.ip_masq_backend, host)


def gc(args: CmdArgs) -> None:
    conf = args.conf(PtpConf)
    errors: list[str] = []
    if conf.ip_masq:
        try:
            ipmasq.gc(args.network_name, ipmasq.valid_attachments(args.config), args.host_netns)
        except CNIError as exc:
            errors.append(exc.msg)
    try:
        delegate("GC", str(conf.ipam["type"]), args)
    except CNIError as exc:
        errors.append(exc.msg)
    if errors:
        raise CNIError(INTERNAL, "; ".join(errors))


def status(args: CmdArgs) -> None:
    conf = args.conf(PtpConf)
    delegate("STATUS", str(conf.ipam["type"]), args)
