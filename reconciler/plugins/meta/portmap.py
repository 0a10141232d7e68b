"""portmap: forward host ports to the container (chained after bridge/ptp/macvlan…).

Config: `runtimeConfig.portMappings` (`hostPort`, `containerPort`, `protocol`
tcp|udp|sctp, `hostIP`), `backend` (iptables|nftables; else chosen like the
host, see kernel.firewall.select), `snat` (default true), `masqAll`,
`markMasqBit` (0..31, default 13), `externalSetMarkChain`, `conditionsV4` /
`conditionsV6`. Host-side work happens in `args.host_netns`.
ADD forwards the first IPv4 and IPv6 address of CNI_IFNAME, flushes stale UDP
conntrack entries of the host ports, and for IPv4 with snat sets
`route_localnet` on the host interface towards the container (so
localhost:hostPort works). DEL removes this container's rules from both
backends (also when the mappings are gone) and flushes UDP conntrack again.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from typing import Any

from pydantic import Field, field_validator, model_validator

from reconciler.cni.args import CmdArgs
from reconciler.cni.model import CNIModel
from reconciler.cni.types import NetConf, Result
from reconciler.cni.version import ALL_VERSIONS, parse_result
from reconciler.errors import INTERNAL, INVALID_NETWORK_CONFIG, NOT_AVAILABLE, CNIError, config_error

log = logging.getLogger(__name__)
SUPPORTED_VERSIONS = ALL_VERSIONS
PROTOCOLS = ("tcp", "udp", "sctp")
Address = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class PortMapEntry(CNIModel):
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = Field(default="", alias="hostIP")

    @field_validator("host_port", "container_port")
    @classmethod
    def _port(cls, v: int) -> int:
        if not 0 < v <= 65535:
            raise ValueError(f"port {v} out of range 1-65535")
        return v

    @field_validator("protocol")
    @classmethod
    def _proto(cls, v: str) -> str:
        low = (v or "tcp").lower()
        if low not in PROTOCOLS:
            raise ValueError(f"unknown protocol {v!r} (want tcp, udp or sctp)")
        return low

    @field_validator("host_ip")
    @classmethod
    def _host_ip(cls, v: str) -> str:
        return str(ipaddress.ip_address(v)) if v else ""


class PortmapConf(NetConf):
    backend: str | None = None
    snat: bool | None = None
    masq_all: bool = False
    mark_masq_bit: int | None = None
    external_set_mark_chain: str | None = None
    conditions_v4: list[str] | None = Field(default=None, alias="conditionsV4")
    conditions_v6: list[str] | None = Field(default=None, alias="conditionsV6")

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str | None) -> str | None:
        if v not in (None, "", "iptables", "nftables"):
            raise ValueError(f"unknown backend {v!r} (want iptables or nftables)")
        return v or None

    @field_validator("mark_masq_bit")
    @classmethod
    def _bit(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= 31:
            raise ValueError("MasqMarkBit must be between 0 and 31")
        return v

    @model_validator(mode="after")
    def _exclusive(self) -> PortmapConf:
        if self.external_set_mark_chain and self.mark_masq_bit is not None:
            raise ValueError("Cannot specify externalSetMarkChain and markMasqBit")
        for name, conds in (("conditionsV4", self.conditions_v4), ("conditionsV6", self.conditions_v6)):
            if conds and self.backend == "iptables" and not conds[0].startswith(("-", "!")):
                raise ValueError(f"{name}: iptables conditions must start with '-' or '!'")
            if conds and self.backend == "nftables" and conds[0].startswith("-"):
                raise ValueError(f"{name}: nftables conditions look like iptables arguments")
        return self


def _mappings(args: CmdArgs) -> list[PortMapEntry]:
    raw = args.runtime_config().get("portMappings") or []
    if not isinstance(raw, list):
        raise config_error("runtimeConfig.portMappings", "must be a list")
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(PortMapEntry.model_validate(item))
        except Exception as exc:  # pydantic ValidationError: name the entry and field
            problems = getattr(exc, "errors", lambda: [])()
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', ()))}: {str(e.get('msg', '')).removeprefix('Value error, ')}"
                for e in problems[:2]) or str(exc)
            raise config_error(f"runtimeConfig.portMappings[{i}]", detail) from exc
    return out


def _conf(args: CmdArgs) -> PortmapConf:
    return args.conf(PortmapConf)


def _prev(conf: PortmapConf) -> Result:
    if conf.prev_result is None:
        raise CNIError(INVALID_NETWORK_CONFIG, "must be called as chained plugin", "prevResult missing")
    return parse_result(conf.prev_result, conf.cni_version)


def container_addresses(result: Result, ifname: str) -> tuple[Address | None, Address | None]:
    """The first IPv4 and IPv6 address on CNI_IFNAME (inside a sandbox), or with no interface index."""
    v4: Address | None = None
    v6: Address | None = None
    for ip in result.ips:
        if ip.interface is not None:
            if not 0 <= ip.interface < len(result.interfaces):
                continue
            iface = result.interfaces[ip.interface]
            if iface.name != ifname or not iface.sandbox:
                continue
        addr = ip.iface
        if addr.version == 4 and v4 is None:
            v4 = addr
        elif addr.version == 6 and v6 is None:
            v6 = addr
    return v4, v6


def _forwards(conf: PortmapConf, args: CmdArgs, addrs: list[Address], entries: list[PortMapEntry]) -> list[Any]:
    from reconciler.kernel.firewall.portmap import Forward, PortMapping

    mappings = tuple(PortMapping(e.host_port, e.container_port, e.protocol, e.host_ip) for e in entries)
    snat = True if conf.snat is None else conf.snat
    bit = 13 if conf.mark_masq_bit is None else conf.mark_masq_bit
    out = []
    for addr in addrs:
        conds = conf.conditions_v4 if addr.version == 4 else conf.conditions_v6
        out.append(Forward(args.network_name, args.container_id, addr, mappings, snat, conf.masq_all, bit,
                           conf.external_set_mark_chain or None, tuple(conds or ())))
    return out


def _forced_backend(conf: PortmapConf) -> str | None:
    """`backend`, else the one the conditions are written for (iptables args start with - or !)."""
    if conf.backend:
        return conf.backend
    conds = conf.conditions_v4 or conf.conditions_v6
    if conds:
        return "iptables" if conds[0].startswith(("-", "!")) else "nftables"
    return None


def _kernel_error(what: str, exc: Exception) -> CNIError:
    return CNIError(INTERNAL, f"portmap: {what}", str(exc))


def _route_localnet(addr: Address, netns: str | None) -> None:
    """`route_localnet=1` on the host interface that routes to the container (IPv4 only)."""
    from reconciler.kernel.firewall.portmap import enable_route_localnet

    enable_route_localnet(addr.ip, netns)  # type: ignore[arg-type]


def _flush_udp(entries: list[PortMapEntry], families: set[int], netns: str | None) -> None:
    from reconciler.kernel import conntrack

    ports = [e.host_port for e in entries if e.protocol == "udp"]
    for family in sorted(families):
        try:
            conntrack.flush_udp_dports(ports, family, netns)
        except Exception as exc:  # a missing nf_conntrack_netlink must not fail the call
            log.warning("portmap: could not flush UDP conntrack entries: %s", exc)


def add(args: CmdArgs) -> Result:
    conf = _conf(args)
    result = _prev(conf)
    entries = _mappings(args)
    if not entries:
        return result
    v4, v6 = container_addresses(result, args.ifname)
    addrs = [a for a in (v4, v6) if a is not None]
    if not addrs:  # as the reference: nothing to forward to, the chain goes on
        log.warning("portmap: no IP address of interface %s in prevResult: no ports mapped", args.ifname)
        return result
    from reconciler.kernel.firewall import select
    from reconciler.kernel.firewall.portmap import IMPLS

    netns = args.host_netns
    net, cid = args.network_name, args.container_id
    try:
        backend = select.choose(_forced_backend(conf), netns, lambda b: IMPLS[b].has_attachment(net, cid, netns),
                                what=f"portmap {net}/{cid}")
        with contextlib.ExitStack() as undo:
            undo.callback(IMPLS[backend].teardown, net, cid, netns)
            for fwd in _forwards(conf, args, addrs, entries):
                IMPLS[backend].setup(fwd, netns)
            if v4 is not None and (conf.snat is None or conf.snat):
                _route_localnet(v4, netns)
            undo.pop_all()
    except ValueError as exc:  # a rule iptables refuses to parse: only conditions come from the user
        if conf.conditions_v4 or conf.conditions_v6:
            raise config_error("conditionsV4/conditionsV6", str(exc)) from exc
        raise _kernel_error("failed to set up port forwarding", exc) from exc
    except CNIError:
        raise
    except Exception as exc:
        raise _kernel_error("failed to set up port forwarding", exc) from exc
    _flush_udp(entries, {a.version for a in addrs}, netns)
    return result


def delete(args: CmdArgs) -> None:
    from reconciler.kernel.firewall.base import BACKENDS, BackendUnavailable
    from reconciler.kernel.firewall.portmap import IMPLS

    try:
        entries = _mappings(args)
    except CNIError:
        entries = []  # DEL must not fail on a config that became invalid
    for name in BACKENDS:
        try:
            IMPLS[name].teardown(args.network_name, args.container_id, args.host_netns)
        except BackendUnavailable:
            continue
        except Exception as exc:
            raise _kernel_error("failed to remove port forwarding", exc) from exc
    if entries:
        _flush_udp(entries, {4, 6}, args.host_netns)


def check(args: CmdArgs) -> None:
    conf = _conf(args)
    result = _prev(conf)
    entries = _mappings(args)
    if not entries:
        return
    v4, v6 = container_addresses(result, args.ifname)
    addrs = [a for a in (v4, v6) if a is not None]
    if not addrs:  # ADD mapped nothing (see there)
        return
    from reconciler.kernel.firewall.base import BACKENDS, RuleDrift
    from reconciler.kernel.firewall.portmap import IMPLS

    netns = args.host_netns
    backend = conf.backend
    if backend is None:
        backend = next((b for b in BACKENDS if IMPLS[b].has_attachment(args.network_name, args.container_id,
                                                                        netns)), None)
    if backend is None:
        raise CNIError(INTERNAL, "portmap: no port forwarding rules found for this container")
    try:
        for fwd in _forwards(conf, args, addrs, entries):
            IMPLS[backend].check(fwd, netns)
    except RuleDrift as exc:
        raise CNIError(INTERNAL, str(exc)) from exc


def gc(args: CmdArgs) -> None:
    from reconciler.kernel.firewall.portmap import IMPLS

    valid = {str(a.get("containerID", "")) for a in args.config.get("cni.dev/valid-attachments") or []
             if isinstance(a, dict)}
    for impl in IMPLS.values():
        try:
            impl.gc(args.network_name, valid, args.host_netns)
        except Exception as exc:
            raise _kernel_error("GC failed", exc) from exc


def status(args: CmdArgs) -> None:
    from reconciler.kernel.firewall import iptables, nftables

    if not (iptables.usable(4, args.host_netns) or nftables.usable(args.host_netns)):
        raise CNIError(NOT_AVAILABLE, "portmap: neither iptables-legacy nor nftables is usable")
