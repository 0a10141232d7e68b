"""bridge's host side: the bridge itself, its ports and VLANs, gateway addresses, anti-spoofing rules."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
from typing import Any

from reconciler import ipparse
from reconciler.cni.args import CmdArgs
from reconciler.cni.types import Result, Route
from reconciler.errors import INTERNAL, CNIError
from reconciler.kernel import addrs, bridge, links, macspoof
from reconciler.kernel import netns as nsmod
from reconciler.kernel.netns import KernelError
from reconciler.plugins import hostveth, ipmasq
from reconciler.plugins.iface import undo_quietly
from reconciler.plugins.main.bridge.config import BridgeConf


def firewall(what: str, fn: Any, *args: Any) -> Any:
    """Call into the nftables layer, turning its failures into CNI errors."""
    try:
        return fn(*args)
    except CNIError:
        raise
    except Exception as exc:
        raise CNIError(INTERNAL, f"{what}: {exc}") from exc


# --- ADD ---------------------------------------------------------------------------------------


def ensure_bridge(conf: BridgeConf, host: str | None, undo: contextlib.ExitStack,
                  host_sysctls: dict[str, str | int]) -> links.Link:
    vlan_filtering = bool(conf.vlan or conf.vlan_trunk)
    try:
        br, created = bridge.ensure_bridge(conf.bridge, netns=host, mtu=conf.mtu or None,
                                          vlan_filtering=vlan_filtering)
    except KernelError as exc:
        raise CNIError(INTERNAL, f"failed to create bridge {conf.bridge!r}: {exc}") from exc
    if created:
        undo.callback(undo_quietly(delete_if_unused, conf.bridge, host))
        # Pin the MAC now: an unpinned bridge takes its lowest port's MAC and changes it as containers
        # come and go, which makes every other attachment's CHECK fail (the reference pins only with isGateway).
        # Pin a new MAC rather than the kernel's own: the bridge takes its STP bridge id from a MAC
        # change only, so a MAC set to itself before any port joined leaves the id 8000.000000000000,
        # which wins every root election once someone turns STP on.
        mac = links.random_mac()
        links.set_mac(conf.bridge, mac, host)
        _remember_pin(host, br.index, mac)
        br = dataclasses.replace(br, mac=mac)
    if conf.promisc_mode and not br.promisc:
        links.set_promisc(conf.bridge, True, host)
    host_sysctls[f"net/ipv6/conf/{conf.bridge}/accept_ra"] = 0
    if not br.up:
        links.set_up(conf.bridge, host)
        br = links.get(conf.bridge, host)
    return br


# (host namespace identity, bridge ifindex) -> the MAC this process pinned there. Setting a device's MAC
# pins it for the device's lifetime (the kernel stops deriving it from the ports), and a re-created bridge
# gets a new ifindex: while the index and the MAC read are the ones pinned, the pin holds.
_PINNED: dict[tuple[tuple[int, int] | None, int], str] = {}


def _remember_pin(host: str | None, index: int, mac: str) -> None:
    _PINNED[(nsmod.identity(host), index)] = mac


def pin_mac(br: links.Link, host: str | None) -> str:
    """Pin the bridge's MAC (set it to itself) unless this process already did; return it.

    `br` may have been read before a port joined: an unpinned bridge can change its MAC then, so
    anything but a pin this process made and still sees is read again and pinned."""
    if _PINNED.get((nsmod.identity(host), br.index)) == br.mac:
        return br.mac
    mac = links.get(br.name, host).mac
    links.set_mac(br.name, mac, host)
    _remember_pin(host, br.index, mac)
    return mac


def delete_if_unused(name: str, host: str | None) -> None:
    """Rollback of a bridge this call created: only while no other attachment has joined it meanwhile."""
    br = links.find(name, host)
    if br is not None and not any(lk.master == br.index for lk in links.list_links(host)):
        links.delete(name, host)


def port_vlans(conf: BridgeConf, port: str, host: str | None) -> None:
    """VLAN membership of a bridge port: PVID/untagged `vlan`, tagged trunks, default VLAN 1 dropped unless kept."""
    trunks = conf.trunk_ranges()
    if not (conf.vlan or trunks):
        return
    if not conf.preserve_default_vlan:
        bridge.bridge_vlan(port, 1, add=False, netns=host)
    if conf.vlan:
        bridge.bridge_vlan(port, conf.vlan, pvid=True, untagged=True, netns=host)
    elif not conf.preserve_default_vlan:
        bridge.bridge_vlan(port, 1, pvid=True, untagged=True, netns=host)  # native VLAN of a trunk
    for lo, hi in trunks:
        bridge.bridge_vlan(port, lo, vid_end=hi, netns=host)


def setup_port(conf: BridgeConf, host_veth: str, host: str | None) -> None:
    """A new port's settings (it was enslaved when created)."""
    if conf.hairpin_mode or conf.port_isolation:
        bridge.set_bridge_port(host_veth, host, hairpin=conf.hairpin_mode or None,
                               isolated=conf.port_isolation or None)
    port_vlans(conf, host_veth, host)


def ensure_vlan_gateway(conf: BridgeConf, host: str | None, bridge_index: int) -> links.Link:
    """`<bridge>.<vlan>`: a host-side veth whose peer is an access port of the VLAN; it carries the gateway."""
    name = f"{conf.bridge}.{conf.vlan}"
    link = links.find(name, host)
    if link is None:
        port, _ = hostveth.setup_veth(name, netns=host or "/proc/self/ns/net", host_netns=host,
                                      mtu=conf.mtu or None, master=bridge_index)
        port_vlans(conf, port.name, host)
    links.set_up(name, host)
    return links.get(name, host)


def gateways(conf: BridgeConf, result: Result) -> dict[int, list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]]:
    """Fill missing gateways (first host of the subnet) and default routes; return bridge addresses per family."""
    out: dict[int, list[Any]] = {}
    for ipc in result.ips:
        ipc.interface = 2
        net = ipc.iface.network
        if ipc.gateway is None and conf.is_gateway:
            ipc.gateway = str(net.network_address + 1)
        if conf.is_gateway and ipc.gateway:
            gw_iface = ipparse.interface(f"{ipc.gateway}/{net.prefixlen}")
            if gw_iface not in out.setdefault(ipc.version, []):
                out[ipc.version].append(gw_iface)
            if conf.is_default_gateway:
                default = "0.0.0.0/0" if ipc.version == 4 else "::/0"
                if not any(r.dst == default and r.gw for r in result.routes) and not any(
                        r.dst == default and r.gw == ipc.gateway for r in result.routes):
                    result.routes.append(Route(dst=default, gw=ipc.gateway))
    return out


def ensure_gateway_addr(conf: BridgeConf, dev: str, gw: Any, host: str | None, index: int = 0) -> None:
    """`gw` on `dev` (`index`: its ifindex, when known), replacing a conflicting address with forceAddress."""
    for existing in addrs.list_addrs(host, dev, family=gw.version, index=index):
        if not existing.is_global:
            continue
        if existing.address == gw:
            return
        conflict = gw.version == 4 or existing.address.network.overlaps(gw.network)
        if not conflict:
            continue
        if not conf.force_address:
            raise CNIError(INTERNAL, f"{dev!r} already has an IP address different from {gw}")
        addrs.delete(dev, existing.address, host)
    addrs.add(dev, gw, host, nodad=True, index=index)


def gc_spoofchk(conf: BridgeConf, args: CmdArgs) -> None:
    """Drop macspoofchk rules whose host veth is gone, or is a port of this bridge and not a valid attachment."""
    host = args.host_netns
    valid = {macspoof.ref_id(cid, ifn) for cid, ifn in ipmasq.valid_attachments(args.config)}
    with nsmod.session():
        br = links.find(conf.bridge, host)
        for ref, iface in macspoof.attachments(host).items():
            link = links.find(iface, host)
            mine = link is not None and br is not None and link.master == br.index
            if link is None or (mine and ref not in valid):
                macspoof.teardown(ref, host)
