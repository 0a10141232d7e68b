"""Plugin-level interface helpers shared by every main plugin.

- `configure_iface`: put a Result's addresses and routes on a container
  interface (the reference's ipam.ConfigureIface semantics).
- `check_*`: CHECK helpers comparing a prevResult with a kernel snapshot,
  each drift with its own message.
- small pieces every plugin needs: the MAC precedence, the prevResult,
  turning kernel errors into CNI errors.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Callable, Iterator
from typing import Any

from reconciler.cni.args import CmdArgs
from reconciler.cni.types import Interface, IPConfig, Result, Route
from reconciler.cni.version import parse_result
from reconciler.errors import INTERNAL, INVALID_NETWORK_CONFIG, CNIError
from reconciler.kernel import addrs, links, routes, sysctl
from reconciler.kernel import netns as nsmod
from reconciler.kernel.netns import KernelError
from reconciler.kernel.snapshot import Snapshot

log = logging.getLogger(__name__)


@contextlib.contextmanager
def kernel_errors(what: str) -> Iterator[None]:
    """Re-raise kernel failures as CNI errors (999, message kept) with context."""
    try:
        yield
    except CNIError:
        raise
    except KernelError as exc:
        raise CNIError(INTERNAL, f"{what}: {exc}") from exc


def undo_quietly(fn: Callable[..., object], *args: object) -> Callable[[], None]:
    """An undo step for an ExitStack that logs instead of masking the original failure."""

    def run() -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - rollback is best effort
            log.warning("rollback step %s failed: %s", getattr(fn, "__name__", fn), exc)

    return run


def mac_from_args(args: CmdArgs) -> str | None:
    """The requested container MAC: CNI_ARGS MAC < args.cni.mac < runtimeConfig.mac."""
    mac = None
    cni_args = args.known_args(str(args.config.get("type") or "this plugin"), "MAC")
    if cni_args.get("MAC"):
        mac = cni_args["MAC"]
    a = args.config.get("args")
    if isinstance(a, dict) and isinstance(a.get("cni"), dict) and a["cni"].get("mac"):
        mac = str(a["cni"]["mac"])
    rc = args.runtime_config()
    if rc.get("mac"):
        mac = str(rc["mac"])
    if mac is not None:
        parts = mac.split(":")
        if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
            raise CNIError(INVALID_NETWORK_CONFIG, f"invalid MAC address {mac!r}")
        mac = mac.lower()
    return mac


def prev_result(args: CmdArgs, required: bool = True) -> Result | None:
    """The `prevResult` of the config as a 1.1.0 Result (CHECK needs it)."""
    raw = args.config.get("prevResult")
    if not raw:
        if required:
            raise CNIError(INVALID_NETWORK_CONFIG, "required prevResult missing")
        return None
    return parse_result(raw, args.cni_version)


def ipam_type(config: dict[str, Any]) -> str:
    """The config's IPAM plugin type; '' without one."""
    ipam = config.get("ipam")
    return str(ipam.get("type") or "") if isinstance(ipam, dict) else ""


def is_layer3(args: CmdArgs) -> bool:
    return bool(ipam_type(args.config))


# --- ConfigureIface ------------------------------------------------------------------------------


def _ips_for(result: Result, ifname: str) -> list[IPConfig]:
    out = []
    for ipc in result.ips:
        if ipc.interface is None:
            continue
        idx = ipc.interface
        if idx < 0 or idx >= len(result.interfaces) or result.interfaces[idx].name != ifname:
            raise CNIError(INTERNAL, f"failed to add IP addr {ipc.address} to {ifname!r}: invalid interface index")
        out.append(ipc)
    return out


def gateways(ips: list[IPConfig]) -> dict[int, str]:
    """First gateway per IP family."""
    gws: dict[int, str] = {}
    for ipc in ips:
        if ipc.gateway and ipc.version not in gws:
            gws[ipc.version] = ipc.gateway
    return gws


def configure_iface(netns: str, ifname: str, result: Result, index: int = 0) -> None:
    """Add the result's addresses on `ifname` (inside `netns`; `index`: its ifindex, when known),
    bring it up, wait for DAD, add routes."""
    ips = _ips_for(result, ifname)
    with kernel_errors(f"failed to configure {ifname!r}"):
        if any(ipc.version == 6 for ipc in ips):
            sysctl.write_many({
                f"net/ipv6/conf/{ifname}/disable_ipv6": 0,
                "net/ipv6/conf/lo/disable_ipv6": 0,
                f"net/ipv6/conf/{ifname}/keep_addr_on_down": 1,
            }, netns, missing_ok=True)
        for ipc in ips:
            addrs.add(ifname, ipc.iface, netns, index=index)
        links.set_up(ifname, netns)
        gws = gateways(ips)
        if any(ipc.version == 6 for ipc in ips):
            addrs.settle(ifname, netns, timeout=10)
        for rt in result.routes:
            net = rt.network
            gw = rt.gw or gws.get(net.version)
            try:
                routes.add(net, gateway=gw, ifname=ifname, netns=netns, table=rt.table, scope=rt.scope,
                           metric=rt.priority, index=index)
            except KernelError as exc:
                raise CNIError(INTERNAL, f"failed to add route '{net} via {gw} dev {ifname}': {exc}") from exc


# --- CHECK helpers -------------------------------------------------------------------------------


def check_interface_ips(snap: Snapshot, ifname: str, result: Result) -> None:
    """Each result IP for `ifname` is on the link; each gateway is routable from it."""
    link = snap.link(ifname)
    if link is None:
        raise CNIError(INTERNAL, f"interface {ifname!r} not found in {snap.netns}")
    have = {a.address for a in snap.addrs_of(ifname)}
    for ipc in result.ips:
        if ipc.interface is None or ipc.interface >= len(result.interfaces):
            continue
        if result.interfaces[ipc.interface].name != ifname:
            continue
        if ipc.iface not in have:
            raise CNIError(INTERNAL, f"failed to find ip {ipc.address} on interface {ifname!r}")


def _route_matches(entry: routes.RouteEntry, rt: Route, gw: str | None, oif: int) -> bool:
    if entry.dst != rt.network:
        return False
    if gw and (entry.gateway is None or str(entry.gateway) != str(ipaddress.ip_address(gw))):
        return False
    if rt.table is not None and entry.table != rt.table:
        return False
    if rt.priority is not None and entry.priority != rt.priority:
        return False
    return entry.oif == oif or entry.oif is None


def check_routes(snap: Snapshot, ifname: str, result: Result) -> None:
    """Each result route exists on `ifname` (gateway defaulting to the IPs' gateway, as ADD applied it)."""
    link = snap.link(ifname)
    if link is None:
        raise CNIError(INTERNAL, f"interface {ifname!r} not found in {snap.netns}")
    gws = gateways([ipc for ipc in result.ips if ipc.interface is not None
                    and ipc.interface < len(result.interfaces)
                    and result.interfaces[ipc.interface].name == ifname])
    for rt in result.routes:
        gw = rt.gw or gws.get(rt.network.version)
        if not any(_route_matches(e, rt, gw, link.index) for e in snap.routes):
            via = f" via {gw}" if gw else ""
            raise CNIError(INTERNAL, f"route {rt.dst}{via} dev {ifname} not found in {snap.netns}")


def check_link(snap: Snapshot, iface: Interface, kind: str | None = None) -> links.Link:
    """The interface exists in the snapshot, with the result's MAC (and kind if given)."""
    link = snap.link(iface.name)
    if link is None:
        raise CNIError(INTERNAL, f"interface {iface.name!r} not found in {snap.netns or 'host netns'}")
    if kind is not None and link.kind != kind:
        raise CNIError(INTERNAL, f"interface {iface.name!r}: kind is {link.kind or 'device'!r}, expected {kind!r}")
    if iface.mac and link.mac != iface.mac.lower():
        raise CNIError(INTERNAL, f"interface {iface.name!r}: MAC is {link.mac}, expected {iface.mac.lower()}")
    if iface.mtu and link.mtu != iface.mtu:
        raise CNIError(INTERNAL, f"interface {iface.name!r}: MTU is {link.mtu}, expected {iface.mtu}")
    return link


def find_sandbox_iface(result: Result, ifname: str, netns: str) -> int:
    """Index of the container interface in `result`, checking its sandbox."""
    for i, iface in enumerate(result.interfaces):
        if iface.name == ifname:
            if iface.sandbox and nsmod.resolve(iface.sandbox) != nsmod.resolve(netns) and not nsmod.same(
                    iface.sandbox, netns):
                raise CNIError(INTERNAL, f"sandbox in prevResult {iface.sandbox} doesn't match configured netns: {netns}")
            return i
    raise CNIError(INTERNAL, f"interface {ifname!r} not listed in prevResult")


def container_addresses(result: Result | None, ifname: str) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """The addresses a result gave `ifname` (what DEL tears down when the netns is gone)."""
    if result is None:
        return []
    out = []
    for ipc in result.ips:
        idx = ipc.interface
        if idx is not None and idx < len(result.interfaces) and result.interfaces[idx].name != ifname:
            continue
        out.append(ipc.iface)
    return out
