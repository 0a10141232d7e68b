"""bridge: a veth pair from the container onto a Linux bridge on the host, optionally the subnet's gateway."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from typing import Any

from pydantic import Field, field_validator, model_validator

from reconciler.cni.args import CmdArgs
from reconciler.cni.invoke import delegate
from reconciler.cni.model import CNIModel
from reconciler.cni.types import DNS, Interface, Result, Route
from reconciler.cni.version import ALL_VERSIONS
from reconciler.errors import INTERNAL, INVALID_NETWORK_CONFIG, CNIError
from reconciler.kernel import addrs, bridge, links, macspoof, sysctl
from reconciler.kernel import netns as nsmod
from reconciler.kernel.netns import KernelError
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

log = logging.getLogger(__name__)
SUPPORTED_VERSIONS = ALL_VERSIONS


class VlanTrunk(CNIModel):
    min_id: int | None = Field(default=None, alias="minID")
    max_id: int | None = Field(default=None, alias="maxID")
    id: int | None = None


class BridgeConf(CNIModel):
    bridge: str = "cni0"
    is_gateway: bool = False
    is_default_gateway: bool = False
    force_address: bool = False
    ip_masq: bool = False
    ip_masq_backend: str | None = None
    mtu: int = 0
    hairpin_mode: bool = False
    promisc_mode: bool = False
    vlan: int = 0
    vlan_trunk: list[VlanTrunk] | None = None
    preserve_default_vlan: bool = False
    enabledad: bool = False
    macspoofchk: bool = False
    disable_container_interface: bool = False
    port_isolation: bool = False
    ipam: dict[str, Any] | None = None
    dns: DNS | None = None

    @field_validator("bridge")
    @classmethod
    def _bridge(cls, v: str) -> str:
        v = v or "cni0"
        if len(v.encode()) > 15 or "/" in v or any(c.isspace() for c in v):
            raise ValueError(f"invalid bridge name {v!r}")
        return v

    @field_validator("mtu")
    @classmethod
    def _mtu(cls, v: int) -> int:
        if v and not 68 <= v <= 65535:
            raise ValueError(f"invalid MTU {v} (must be 0 or between 68 and 65535)")
        return v

    @field_validator("vlan")
    @classmethod
    def _vlan(cls, v: int) -> int:
        if not 0 <= v <= 4094:
            raise ValueError(f"invalid VLAN ID {v} (must be between 0 and 4094)")
        return v

    @field_validator("ip_masq_backend")
    @classmethod
    def _backend(cls, v: str | None) -> str | None:
        if v not in (None, "", "iptables", "nftables"):
            raise ValueError(f"unknown ipMasqBackend {v!r} (iptables or nftables)")
        return v or None

    @model_validator(mode="after")
    def _combos(self) -> BridgeConf:
        if self.hairpin_mode and self.promisc_mode:
            raise ValueError("cannot set hairpin mode and promiscuous mode at the same time")
        if self.is_default_gateway:
            self.is_gateway = True
        if self.disable_container_interface and self.ipam and self.ipam.get("type"):
            raise ValueError("cannot use IPAM when disableContainerInterface flag is set")
        return self

    def trunk_ranges(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for item in self.vlan_trunk or []:
            if item.id is not None:
                if not 1 <= item.id <= 4094:
                    raise config_error(f"vlanTrunk: invalid VLAN ID {item.id} (must be between 1 and 4094)")
                out.append((item.id, item.id))
            if item.min_id is not None or item.max_id is not None:
                if item.min_id is None or item.max_id is None:
                    raise config_error("vlanTrunk: minID and maxID must be set together")
                if not (1 <= item.min_id <= 4094 and 1 <= item.max_id <= 4094) or item.min_id > item.max_id:
                    raise config_error(f"vlanTrunk: invalid range {item.min_id}-{item.max_id}")
                out.append((item.min_id, item.max_id))
        return out


def config_error(msg: str) -> CNIError:
    return CNIError(INVALID_NETWORK_CONFIG, f"invalid network config: {msg}")


def _load(args: CmdArgs) -> BridgeConf:
    conf = args.conf(BridgeConf)
    conf.trunk_ranges()
    return conf


def _firewall(what: str, fn: Any, *args: Any) -> Any:
    """Call into the nftables layer, turning its failures into CNI errors."""
    try:
        return fn(*args)
    except CNIError:
        raise
    except Exception as exc:
        raise CNIError(INTERNAL, f"{what}: {exc}") from exc


# --- ADD ---------------------------------------------------------------------------------------


def _ensure_bridge(conf: BridgeConf, host: str | None, undo: contextlib.ExitStack) -> links.Link:
    vlan_filtering = bool(conf.vlan or conf.vlan_trunk)
    try:
        br, created = bridge.ensure_bridge(conf.bridge, netns=host, mtu=conf.mtu or None,
                                          vlan_filtering=vlan_filtering)
    except KernelError as exc:
        raise CNIError(INTERNAL, f"failed to create bridge {conf.bridge!r}: {exc}") from exc
    if created:
        undo.callback(undo_quietly(_delete_if_unused, conf.bridge, host))
    if conf.promisc_mode and not br.promisc:
        links.set_promisc(conf.bridge, True, host)
    with contextlib.suppress(OSError, ValueError):
        sysctl.write(f"net/ipv6/conf/{conf.bridge}/accept_ra", 0, host)
    if not br.up:
        links.set_up(conf.bridge, host)
    return links.get(conf.bridge, host)


def _delete_if_unused(name: str, host: str | None) -> None:
    """Rollback of a bridge this call created: only while no other attachment has joined it meanwhile."""
    br = links.find(name, host)
    if br is not None and not any(lk.master == br.index for lk in links.list_links(host)):
        links.delete(name, host)


def _port_vlans(conf: BridgeConf, port: str, host: str | None) -> None:
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


def _setup_port(conf: BridgeConf, host_veth: str, host: str | None) -> None:
    links.set_master(host_veth, conf.bridge, host)
    if conf.hairpin_mode or conf.port_isolation:
        bridge.set_bridge_port(host_veth, host, hairpin=conf.hairpin_mode or None,
                               isolated=conf.port_isolation or None)
    _port_vlans(conf, host_veth, host)


def _ensure_vlan_gateway(conf: BridgeConf, host: str | None) -> links.Link:
    """`<bridge>.<vlan>`: a host-side veth whose peer is an access port of the VLAN; it carries the gateway."""
    name = f"{conf.bridge}.{conf.vlan}"
    link = links.find(name, host)
    if link is None:
        port, _ = hostveth.setup_veth(name, netns=host or "/proc/self/ns/net", host_netns=host,
                                      mtu=conf.mtu or None)
        links.set_master(port.name, conf.bridge, host)
        _port_vlans(conf, port.name, host)
    links.set_up(name, host)
    return links.get(name, host)


def _gateways(conf: BridgeConf, result: Result) -> dict[int, list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]]:
    """Fill missing gateways (first host of the subnet) and default routes; return bridge addresses per family."""
    out: dict[int, list[Any]] = {}
    for ipc in result.ips:
        ipc.interface = 2
        net = ipc.iface.network
        if ipc.gateway is None and conf.is_gateway:
            ipc.gateway = str(net.network_address + 1)
        if conf.is_gateway and ipc.gateway:
            gw_iface = ipaddress.ip_interface(f"{ipc.gateway}/{net.prefixlen}")
            if gw_iface not in out.setdefault(ipc.version, []):
                out[ipc.version].append(gw_iface)
            if conf.is_default_gateway:
                default = "0.0.0.0/0" if ipc.version == 4 else "::/0"
                if not any(r.dst == default and r.gw for r in result.routes) and not any(
                        r.dst == default and r.gw == ipc.gateway for r in result.routes):
                    result.routes.append(Route(dst=default, gw=ipc.gateway))
    return out


def _ensure_gateway_addr(conf: BridgeConf, dev: str, gw: Any, host: str | None) -> None:
    for existing in addrs.list_addrs(host, dev, family=gw.version):
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
    addrs.add(dev, gw, host, nodad=True)


def add(args: CmdArgs) -> Result:
    conf = _load(args)
    mac = mac_from_args(args)
    host = args.host_netns
    layer3 = is_layer3(args)
    with nsmod.session(), contextlib.ExitStack() as undo, kernel_errors("bridge"):
        _ensure_bridge(conf, host, undo)
        host_veth, cont = hostveth.setup_veth(args.ifname, netns=args.netns, host_netns=host,
                                              mtu=conf.mtu or None, mac=mac)
        undo.callback(undo_quietly(links.delete, host_veth.name, host))
        _setup_port(conf, host_veth.name, host)
        if conf.macspoofchk:
            ref = macspoof.ref_id(args.container_id, args.ifname)
            _firewall("macspoofchk", macspoof.setup, host_veth.name, cont.mac, ref, host)
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
        gw_addrs = _gateways(conf, result)

        if layer3:
            dad = {f"net/ipv6/conf/{args.ifname}/enhanced_dad": 1, f"net/ipv6/conf/{args.ifname}/accept_dad": 1} \
                if conf.enabledad else {f"net/ipv6/conf/{args.ifname}/accept_dad": 0}
            with contextlib.suppress(OSError, ValueError):
                sysctl.write_many({**dad, f"net/ipv4/conf/{args.ifname}/arp_notify": 1}, args.netns,
                                  missing_ok=True)
            configure_iface(args.netns, args.ifname, result)
        elif not conf.disable_container_interface:
            links.set_up(args.ifname, args.netns)

        vlan_gw: links.Link | None = None
        if conf.is_gateway and gw_addrs:
            if conf.vlan:
                vlan_gw = _ensure_vlan_gateway(conf, host)
            for family_addrs in gw_addrs.values():
                for gw in family_addrs:
                    _ensure_gateway_addr(conf, vlan_gw.name if vlan_gw else conf.bridge, gw, host)
            br = links.get(conf.bridge, host)
            links.set_mac(conf.bridge, br.mac, host)  # pin the MAC: stop it following port churn
            sysctl.enable_forwarding(4 in gw_addrs, 6 in gw_addrs, host)

        if conf.ip_masq and result.ips:
            addresses = [ipc.iface for ipc in result.ips]
            ipmasq.setup(args.network_name, args.container_id, args.ifname, addresses, conf.ip_masq_backend, host)
            undo.callback(undo_quietly(ipmasq.teardown, args.network_name, args.container_id, args.ifname,
                                          addresses, host))

        if not conf.disable_container_interface and not links.wait_oper_up(host_veth.name, host):
            raise CNIError(INTERNAL, f"bridge port in error state: {host_veth.name}")

        result.interfaces = [
            Interface(name=conf.bridge, mac=links.get(conf.bridge, host).mac),
            Interface(name=host_veth.name, mac=links.get(host_veth.name, host).mac),
            Interface(name=args.ifname, mac=links.get(args.ifname, args.netns).mac, sandbox=args.netns),
        ]
        if vlan_gw is not None:
            result.interfaces.append(Interface(name=vlan_gw.name, mac=vlan_gw.mac))
        if conf.dns is not None and not conf.dns.is_empty():
            result.dns = conf.dns
        undo.pop_all()
    return result


# --- DEL / CHECK / GC / STATUS ----------------------------------------------------------------------


def delete(args: CmdArgs) -> None:
    conf = _load(args)
    prev = prev_result(args, required=False)
    host = args.host_netns
    with nsmod.session(), kernel_errors("bridge"):
        found: list[Any] = []
        if args.netns:
            _, found = hostveth.delete_container_link(args.ifname, args.netns)
        if is_layer3(args):
            delegate("DEL", str(conf.ipam["type"]), args)  # type: ignore[index]
        if conf.macspoofchk:
            _firewall("macspoofchk", macspoof.teardown, macspoof.ref_id(args.container_id, args.ifname), host)
        if conf.ip_masq:
            addresses = found or container_addresses(prev, args.ifname)
            ipmasq.teardown(args.network_name, args.container_id, args.ifname, addresses, host)


def check(args: CmdArgs) -> None:
    conf = _load(args)
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
                missing = _firewall("macspoofchk", macspoof.check, iface.name, cont.mac, ref, host)
                if missing:
                    raise CNIError(INTERNAL, missing)
        check_interface_ips(cont_snap, args.ifname, prev)
        check_routes(cont_snap, args.ifname, prev)
    if conf.ip_masq and prev.ips:
        ipmasq.check(args.network_name, args.container_id, args.ifname, container_addresses(prev, args.ifname),
                     conf.ip_masq_backend, host)


def _gc_spoofchk(conf: BridgeConf, args: CmdArgs) -> None:
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


def gc(args: CmdArgs) -> None:
    conf = _load(args)
    errors: list[str] = []
    if conf.macspoofchk:
        try:
            _firewall("macspoofchk GC", _gc_spoofchk, conf, args)
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
    conf = _load(args)
    if is_layer3(args):
        delegate("STATUS", str(conf.ipam["type"]), args)  # type: ignore[index]
