"""bridge: a veth pair from the container onto a Linux bridge on the host, optionally the subnet's gateway."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from reconciler.cni.args import CmdArgs
from reconciler.cni.invoke import delegate
from reconciler.cni.types import Interface, Result
from reconciler.cni.version import ALL_VERSIONS
from reconciler.errors import INTERNAL, CNIError
from reconciler.kernel import links, macspoof, sysctl
from reconciler.kernel import netns as nsmod
from reconciler.kernel.snapshot import snapshot
from reconciler.plugins import hostveth, ipmasq
from reconciler.plugins.iface import (
    check_interface_ips,
    check_link,
    check_routes,
    configure_iface,
    container_addresses,
    find_sandbox_iface,
    is_layer3,
    kernel_errors,
    mac_from_args,
    prev_result,
    undo_quietly,
)
from reconciler.plugins.main.bridge.config import load
from reconciler.plugins.main.bridge.host import (
    ensure_bridge,
    ensure_gateway_addr,
    ensure_vlan_gateway,
    firewall,
    gateways,
    gc_spoofchk,
    pin_mac,
    setup_port,
)

log = logging.getLogger(__name__)
SUPPORTED_VERSIONS = ALL_VERSIONS


def add(args: CmdArgs) -> Result:
    conf = load(args)
    mac = mac_from_args(args)
    host = args.host_netns
    layer3 = is_layer3(args)
    host_sysctls: dict[str, str | int] = {}
    with nsmod.session(), contextlib.ExitStack() as undo, kernel_errors("bridge"):
        br = ensure_bridge(conf, host, undo, host_sysctls)
        host_veth, cont = hostveth.setup_veth(args.ifname, netns=args.netns, host_netns=host,
                                              mtu=conf.mtu or None, mac=mac,
                                              host_sysctls=host_sysctls, master=br.index)
        undo.callback(undo_quietly(links.delete, host_veth.name, host))
        setup_port(conf, host_veth.name, host)
        if conf.macspoofchk:
            ref = macspoof.ref_id(args.container_id, args.ifname)
            firewall("macspoofchk", macspoof.setup, host_veth.name, cont.mac, ref, host)
            undo.callback(undo_quietly(macspoof.teardown, ref, host))

        result = Result(cni_version=args.cni_version)
        if layer3:
            ipam_result = delegate("ADD", str(conf.ipam["type"]), args)  # type: ignore[index]
            undo.callback(undo_quietly(delegate, "DEL", str(conf.ipam["type"]), args))  # type: ignore[index]
            if ipam_result is None or not ipam_result.ips:
                raise CNIError(INTERNAL, "IPAM plugin returned missing IP config")
            result = ipam_result
            result.cni_version = args.cni_version
        result.interfaces = [Interface(name=conf.bridge), Interface(name=host_veth.name),
                             Interface(name=args.ifname, sandbox=args.netns)]
        gw_addrs = gateways(conf, result)

        if layer3:
            dad = {f"net/ipv6/conf/{args.ifname}/enhanced_dad": 1, f"net/ipv6/conf/{args.ifname}/accept_dad": 1} \
                if conf.enabledad else {f"net/ipv6/conf/{args.ifname}/accept_dad": 0}
            with contextlib.suppress(OSError, ValueError):
                sysctl.write_many({**dad, f"net/ipv4/conf/{args.ifname}/arp_notify": 1}, args.netns,
                                  missing_ok=True)
            configure_iface(args.netns, args.ifname, result, index=cont.index)
        elif not conf.disable_container_interface:
            links.set_up(args.ifname, args.netns)

        vlan_gw: links.Link | None = None
        bridge_mac = ""
        if conf.is_gateway and gw_addrs:
            if conf.vlan:
                vlan_gw = ensure_vlan_gateway(conf, host, br.index)
            for family_addrs in gw_addrs.values():
                for gw in family_addrs:
                    ensure_gateway_addr(conf, vlan_gw.name if vlan_gw else conf.bridge, gw, host,
                                        index=vlan_gw.index if vlan_gw else br.index)
            bridge_mac = pin_mac(br, host)  # stop it following port churn
            if 4 in gw_addrs:
                host_sysctls["net/ipv4/ip_forward"] = 1
            if 6 in gw_addrs:
                host_sysctls["net/ipv6/conf/all/forwarding"] = 1
        with contextlib.suppress(OSError, ValueError):  # one visit of the host namespace for all of them
            sysctl.write_many(host_sysctls, host, missing_ok=True)

        if conf.ip_masq and result.ips:
            addresses = [ipc.iface for ipc in result.ips]
            ipmasq.setup(args.network_name, args.container_id, args.ifname, addresses, conf.ip_masq_backend, host)
            undo.callback(undo_quietly(ipmasq.teardown, args.network_name, args.container_id, args.ifname,
                                          addresses, host))

        if not conf.disable_container_interface and not links.wait_oper_up(host_veth.name, host):
            raise CNIError(INTERNAL, f"bridge port in error state: {host_veth.name}")

        result.interfaces = [  # veth MACs were fixed at creation; the bridge's is read last, as the reference does
            Interface(name=conf.bridge, mac=bridge_mac or links.get(conf.bridge, host).mac),
            Interface(name=host_veth.name, mac=host_veth.mac),
            Interface(name=args.ifname, mac=cont.mac, sandbox=args.netns),
        ]
        if vlan_gw is not None:
            result.interfaces.append(Interface(name=vlan_gw.name, mac=vlan_gw.mac))
        if conf.dns is not None and not conf.dns.is_empty():
            result.dns = conf.dns
        undo.pop_all()
    return result


# --- DEL / CHECK / GC / STATUS ----------------------------------------------------------------------


def delete(args: CmdArgs) -> None:
    conf = load(args)
    prev = prev_result(args, required=False)
    host = args.host_netns
    with nsmod.session(), kernel_errors("bridge"):
        found: list[Any] = []
        if args.netns:
            _, found = hostveth.delete_container_link(args.ifname, args.netns)
        if is_layer3(args):
            delegate("DEL", str(conf.ipam["type"]), args)  # type: ignore[index]
        if conf.macspoofchk:
            firewall("macspoofchk", macspoof.teardown, macspoof.ref_id(args.container_id, args.ifname), host)
        if conf.ip_masq:
            addresses = found or container_addresses(prev, args.ifname)
            ipmasq.teardown(args.network_name, args.container_id, args.ifname, addresses, host)


def check(args: CmdArgs) -> None:
    conf = load(args)
    if is_layer3(args):
        delegate("CHECK", str(conf.ipam["type"]), args)  # type: ignore[index]
    prev = prev_result(args)
    assert prev is not None
    host = args.host_netns
    with nsmod.session(), kernel_errors("bridge"):
        host_snap = snapshot(host)
        cont_snap = snapshot(args.netns)
        br = host_snap.link(conf.bridge)
        if br is None:
            raise CNIError(INTERNAL, f"bridge {conf.bridge!r} not found")
        if br.kind != "bridge":
            raise CNIError(INTERNAL, f"{conf.bridge!r} is not a bridge (kind {br.kind or 'device'!r})")
        for iface in prev.interfaces:
            if iface.name == conf.bridge and not iface.sandbox and iface.mac and iface.mac.lower() != br.mac:
                raise CNIError(INTERNAL, f"bridge {conf.bridge!r} has MAC {br.mac}, expected {iface.mac}")
        if conf.promisc_mode and not br.promisc:
            raise CNIError(INTERNAL, f"bridge {conf.bridge!r}: promiscuous mode expected on, found off")
        idx = find_sandbox_iface(prev, args.ifname, args.netns)
        cont = check_link(cont_snap, prev.interfaces[idx], kind="veth")
        vlan_gw = f"{conf.bridge}.{conf.vlan}" if conf.vlan else None
        hosts = [i for i in prev.interfaces if not i.sandbox and i.name not in (conf.bridge, vlan_gw)]
        for iface in hosts:
            live = host_snap.link(iface.name)
            if live is not None and live.kind != "veth":
                continue  # appended by a later plugin of the chain (bandwidth's ifb, ...)
            hv = check_link(host_snap, iface, kind="veth")
            if hv.link != cont.index:
                raise CNIError(INTERNAL, f"host veth {iface.name!r} is not the peer of {args.ifname!r}")
            if hv.master != br.index:
                raise CNIError(INTERNAL, f"host veth {iface.name!r} is not attached to bridge {conf.bridge!r}")
            if conf.hairpin_mode and not hv.hairpin:
                raise CNIError(INTERNAL, f"host veth {iface.name!r}: hairpin mode expected on")
            if conf.port_isolation and not hv.isolated:
                raise CNIError(INTERNAL, f"host veth {iface.name!r}: port isolation expected on")
            if conf.macspoofchk:
                ref = macspoof.ref_id(args.container_id, args.ifname)
                missing = firewall("macspoofchk", macspoof.check, iface.name, cont.mac, ref, host)
                if missing:
                    raise CNIError(INTERNAL, missing)
        check_interface_ips(cont_snap, args.ifname, prev)
        check_routes(cont_snap, args.ifname, prev)
    if conf.ip_masq and prev.ips:
        ipmasq.check(args.network_name, args.container_id, args.ifname, container_addresses(prev, args.ifname),
                     conf.ip_masq_backend, host)


def gc(args: CmdArgs) -> None:
    conf = load(args)
    errors: list[str] = []
    if conf.macspoofchk:
        try:
            firewall("macspoofchk GC", gc_spoofchk, conf, args)
        except CNIError as exc:
            errors.append(exc.msg)
    if conf.ip_masq:
        try:
            ipmasq.gc(args.network_name, ipmasq.valid_attachments(args.config), args.host_netns)
        except CNIError as exc:
            errors.append(exc.msg)
    if is_layer3(args):
        try:
            delegate("GC", str(conf.ipam["type"]), args)  # type: ignore[index]
        except CNIError as exc:
            errors.append(exc.msg)
    if errors:
        raise CNIError(INTERNAL, "; ".join(errors))


def status(args: CmdArgs) -> None:
    conf = load(args)
    if is_layer3(args):
        delegate("STATUS", str(conf.ipam["type"]), args)  # type: ignore[index]
