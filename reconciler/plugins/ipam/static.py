"""static IPAM: the addresses, routes and DNS written in the config (or given by the runtime).

Sources, as the reference: `ipam.addresses`; CNI_ARGS `IP=a/24,b/64` appended
and `GATEWAY=` assigned to every address whose subnet contains it;
`args.cni.ips`, then `runtimeConfig.ips` (the `ips` capability) each replace
the whole list. Validation is stricter than the reference's: CIDR everywhere,
gateways of the address's family, no duplicates, no network/broadcast hosts.
No addresses at all is a result of routes and DNS alone, as the reference's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from reconciler.cni.args import CmdArgs, field_error
from reconciler.cni.types import DNS, IPConfig, Result, Route
from reconciler.cni.version import ALL_VERSIONS, at_least
from reconciler.errors import INTERNAL, INVALID_NETWORK_CONFIG, CNIError, config_error

SUPPORTED_VERSIONS = ALL_VERSIONS
ENTERS_NETNS = False  # CNI_NETNS need only exist: the skel does not check it is a namespace

Iface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Addr = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass
class StaticAddress:
    iface: Iface
    gateway: Addr | None


def _key(raw: dict[str, Any], key: str) -> Any:
    low = key.lower()
    return next((v for k, v in raw.items() if isinstance(k, str) and k.lower() == low), None)


def _cidr(value: Any, field: str) -> Iface:
    if not isinstance(value, str) or "/" not in value:
        raise config_error(field, f"{value!r} is NOT in CIDR notation")
    try:
        iface = ipaddress.ip_interface(value.strip())
    except ValueError as exc:
        raise config_error(field, f"invalid CIDR {value!r}") from exc
    net = iface.network
    if (
        iface.version == 4
        and net.prefixlen <= 30
        and iface.ip in (net.network_address, net.broadcast_address)
    ):
        raise config_error(field, f"{iface.ip} is the network or broadcast address of {net}")
    return iface


def _gateway(value: Any, field: str, iface: Iface | None = None) -> Addr | None:
    if value in (None, ""):
        return None
    try:
        gw = ipaddress.ip_address(str(value).strip())
    except ValueError as exc:
        raise config_error(field, f"invalid gateway address {value!r}") from exc
    if iface is not None:
        if gw.version != iface.version:
            raise config_error(field, f"gateway {gw} is not of the same family as {iface}")
        if gw == iface.ip:
            raise config_error(field, f"gateway {gw} is the address itself")
    return gw


def _replacement(value: Any, field: str) -> list[StaticAddress] | None:
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise config_error(field, "must be a list of CIDR addresses")
    return [StaticAddress(_cidr(v, f"{field}[{i}]"), None) for i, v in enumerate(value)]


def load_addresses(config: dict[str, Any], cni_args: dict[str, str]) -> list[StaticAddress]:
    """The effective address list, validated."""
    ipam = config.get("ipam")
    if not isinstance(ipam, dict):
        raise CNIError(INVALID_NETWORK_CONFIG, "IPAM config missing 'ipam' key")
    raw = _key(ipam, "addresses") or []
    if not isinstance(raw, list):
        raise config_error("ipam.addresses", "must be a list of {address, gateway}")
    out: list[StaticAddress] = []
    for i, item in enumerate(raw):
        field = f"ipam.addresses[{i}]"
        if not isinstance(item, dict):
            raise config_error(field, "must be an object with an address")
        iface = _cidr(_key(item, "address"), f"{field}.address")
        out.append(StaticAddress(iface, _gateway(_key(item, "gateway"), f"{field}.gateway", iface)))
    for item in (p.strip() for p in cni_args.get("IP", "").split(",") if p.strip()):
        out.append(StaticAddress(_cidr(item, "CNI_ARGS IP"), None))
    for item in (p.strip() for p in cni_args.get("GATEWAY", "").split(",") if p.strip()):
        gw = _gateway(item, "CNI_ARGS GATEWAY")
        for addr in out:
            if gw is not None and gw.version == addr.iface.version and gw in addr.iface.network:
                addr.gateway = gw
    args = config.get("args")
    cni = args.get("cni") if isinstance(args, dict) else None
    replaced = _replacement(cni.get("ips") if isinstance(cni, dict) else None, "args.cni.ips")
    out = replaced if replaced is not None else out
    runtime = config.get("runtimeConfig")
    replaced = _replacement(runtime.get("ips") if isinstance(runtime, dict) else None, "runtimeConfig.ips")
    out = replaced if replaced is not None else out
    seen: set[Addr] = set()
    for addr in out:
        if addr.iface.ip in seen:
            raise config_error("ipam.addresses", f"duplicate address {addr.iface.ip}")
        seen.add(addr.iface.ip)
    version = str(config.get("cniVersion") or "0.1.0")
    for family in (4, 6):
        if sum(1 for a in out if a.iface.version == family) > 1 and not at_least(version, "0.3.0"):
            raise config_error(
                "ipam.addresses", f"CNI version {version} does not support more than 1 address per family"
            )
    return out


def _routes_dns(ipam: dict[str, Any]) -> tuple[list[Route], DNS | None]:
    routes_raw = _key(ipam, "routes") or []
    if not isinstance(routes_raw, list):
        raise config_error("ipam.routes", "must be a list of routes")
    routes = []
    for i, item in enumerate(routes_raw):
        try:
            routes.append(Route.model_validate(item))
        except ValidationError as exc:
            raise field_error(exc, f"ipam.routes[{i}]") from exc
    dns_raw = _key(ipam, "dns")
    dns = None
    if dns_raw is not None:
        try:
            dns = DNS.model_validate(dns_raw)
        except ValidationError as exc:
            raise field_error(exc, "ipam.dns") from exc
    return routes, dns


def add(args: CmdArgs) -> Result:
    addresses = load_addresses(args.config, args.known_args("static", "IP", "GATEWAY"))
    routes, dns = _routes_dns(args.config["ipam"])
    ips = [IPConfig(address=str(a.iface), gateway=str(a.gateway) if a.gateway else None) for a in addresses]
    return Result(cni_version=args.cni_version, ips=ips, routes=routes, dns=dns)


def delete(args: CmdArgs) -> None:
    """Nothing was reserved; DEL always succeeds."""


def check(args: CmdArgs) -> None:
    """Every configured address must be in prevResult with the configured gateway."""
    addresses = load_addresses(args.config, args.known_args("static", "IP", "GATEWAY"))
    prev = args.config.get("prevResult")
    if not isinstance(prev, dict):
        raise config_error("prevResult", "required prevResult missing")
    found: dict[Addr, Addr | None] = {}
    for item in prev.get("ips") or []:
        if isinstance(item, dict) and isinstance(item.get("address"), str):
            ip = ipaddress.ip_interface(item["address"]).ip
            gw = item.get("gateway")
            found[ip] = ipaddress.ip_address(gw) if gw else None
    for addr in addresses:
        if addr.iface.ip not in found:
            raise CNIError(INTERNAL, f"static: address {addr.iface} missing from prevResult on {args.ifname}")
        if addr.gateway is not None and found[addr.iface.ip] != addr.gateway:
            raise CNIError(
                INTERNAL, f"static: Failed to match addr {addr.iface.ip} on interface {args.ifname}"
            )
