"""What a DHCP lease means for a CNI result: the address, the gateway, the routes."""

from __future__ import annotations

import ipaddress
from typing import Any

from reconciler.cni.types import IPConfig, Result, Route
from reconciler.errors import INTERNAL, CNIError

SCOPE_LINK = 253


def _ip(octets: list[int]) -> str:
    return str(ipaddress.IPv4Address(bytes(octets)))


def classless_routes(data: list[int]) -> list[dict[str, Any]]:
    """Decode option 121 (RFC 3442): width, significant octets of the destination, router."""
    routes = []
    i = 0
    while i < len(data):
        width = data[i]
        if width > 32:
            raise ValueError(f"classless route width {width} > 32")
        significant = (width + 7) // 8
        end = i + 1 + significant + 4
        if end > len(data):
            raise ValueError("truncated classless static route option")
        dst_octets = data[i + 1 : i + 1 + significant] + [0] * (4 - significant)
        router = _ip(data[i + 1 + significant : end])
        dst = ipaddress.IPv4Network((_ip(dst_octets), width), strict=False)
        route: dict[str, Any] = {"dst": str(dst)}
        if router == "0.0.0.0":
            route["scope"] = SCOPE_LINK  # on-link route
        else:
            route["gw"] = router
        routes.append(route)
        i = end
    return routes


def static_routes(data: list[int]) -> list[dict[str, Any]]:
    """Decode option 33: pairs of (destination, router); the destination's class gives its mask."""
    routes = []
    for i in range(0, len(data) - len(data) % 8, 8):
        dst = ipaddress.IPv4Address(bytes(data[i : i + 4]))
        first = int(dst) >> 24
        prefix = 8 if first < 128 else 16 if first < 192 else 24
        routes.append(
            {"dst": str(ipaddress.IPv4Network((dst, prefix), strict=False)), "gw": _ip(data[i + 4 : i + 8])}
        )
    return routes


def summarise(lease: dict[str, Any]) -> dict[str, Any]:
    """Lease (as stored by the kernel layer) -> {"address", "gateway", "routes"}."""
    opts = lease["ack"]["options"]
    mask = opts.get("subnet_mask")
    if not mask:
        raise CNIError(INTERNAL, "DHCP lease has no subnet mask (option 1)")
    address = ipaddress.IPv4Interface(f"{lease['ack']['yiaddr']}/{mask}")
    routers = opts.get("router") or []
    gateway = routers[0] if routers else None
    if opts.get("classless_static_route"):
        routes = classless_routes(list(opts["classless_static_route"]))
    else:
        routes = static_routes(list(opts.get("static_route") or []))
        if gateway:
            routes.append({"dst": "0.0.0.0/0", "gw": gateway})
    return {"address": str(address), "gateway": gateway, "routes": routes}


def to_result(summary: dict[str, Any], priority: int | None) -> Result:
    """The IPAM result for one lease; `priority` becomes every route's metric."""
    routes = []
    for r in summary.get("routes", []):
        route = Route.model_validate(r)
        if priority is not None:
            route.priority = priority
        routes.append(route)
    ip = IPConfig(address=summary["address"], gateway=summary.get("gateway"))
    return Result(ips=[ip], routes=routes)
