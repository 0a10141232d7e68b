"""Spec versions and result conversion between them.

Every result lives in memory as a 1.1.0 `Result`; `parse_result` reads any
version into it and `result_for_version` writes it back out in the version the
caller's config asked for, as the spec's converters do.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import ValidationError

from reconciler.cni.types import DNS, Interface, IPConfig, Result, Route
from reconciler.errors import DECODING_FAILURE, INCOMPATIBLE_VERSION, CNIError

ALL_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT = "1.1.0"
LEGACY = ("0.1.0", "0.2.0")
V04 = ("0.3.0", "0.3.1", "0.4.0")
V1 = ("1.0.0", "1.1.0")


def parse_version(version: str) -> tuple[int, int, int]:
    """'1.0' -> (1, 0, 0); '' -> (0, 1, 0); raises CNIError(6) on junk."""
    if version in (None, ""):
        return (0, 1, 0)
    parts = str(version).split(".")
    if len(parts) > 3 or not all(p.isdigit() for p in parts):
        raise CNIError(DECODING_FAILURE, f"invalid version {version!r}")
    nums = [int(p) for p in parts] + [0] * (3 - len(parts))
    return (nums[0], nums[1], nums[2])


def at_least(version: str, minimum: str) -> bool:
    return parse_version(version) >= parse_version(minimum)


def require_known(version: str) -> None:
    if version not in ALL_VERSIONS:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI versions: unknown cniVersion {version!r}",
            f"supported versions are {list(ALL_VERSIONS)}",
        )


def parse_result(data: dict[str, Any], version: str | None = None) -> Result:
    """Decode a result of any spec version into the 1.1.0 in-memory form."""
    if not isinstance(data, dict):
        raise CNIError(DECODING_FAILURE, "result is not a JSON object")
    version = data.get("cniVersion") or version or CURRENT
    try:
        if version in LEGACY or ("ip4" in data or "ip6" in data) and "ips" not in data:
            return _from_020(data)
        body = {k: v for k, v in data.items()}
        body["cniVersion"] = CURRENT
        if "ips" in body:
            body["ips"] = [{k: v for k, v in ip.items() if k != "version"} for ip in body["ips"] or []]
        return Result.model_validate(body)
    except ValidationError as exc:
        raise CNIError(DECODING_FAILURE, f"failed to decode {version} result", _first_error(exc)) from exc


def _from_020(data: dict[str, Any]) -> Result:
    ips: list[IPConfig] = []
    routes: list[Route] = []
    for key in ("ip4", "ip6"):
        section = data.get(key)
        if not section:
            continue
        ips.append(IPConfig(address=section["ip"], gateway=section.get("gateway")))
        for route in section.get("routes") or []:
            routes.append(Route(dst=route["dst"], gw=route.get("gw")))
    dns = DNS.model_validate(data["dns"]) if data.get("dns") else None
    return Result(cni_version=CURRENT, ips=ips, routes=routes, dns=dns)


def result_for_version(result: Result, version: str) -> dict[str, Any]:
    """Encode `result` as `version` would have it; CNIError(1) when impossible."""
    require_known(version)
    if version in LEGACY:
        return _to_020(result, version)
    out = result.dump()
    out["cniVersion"] = version
    if version != "1.1.0":
        for iface in out.get("interfaces", []):
            for key in ("mtu", "socketPath", "pciID"):
                iface.pop(key, None)
        for route in out.get("routes", []):
            route.pop("table", None)
            route.pop("scope", None)
    if version in V04:
        if out.get("ips"):  # 0.3.x/0.4.0 require "version", listed first as the reference prints it
            out["ips"] = [
                {"version": str(ipaddress.ip_interface(ip["address"]).version), **ip} for ip in out["ips"]
            ]
        if out.get("dns") is None:
            out["dns"] = {}  # 0.3.x/0.4.0 reference plugins always print "dns"
    return out


def _to_020(result: Result, version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": version}
    for family, key in ((4, "ip4"), (6, "ip6")):
        ip = next((i for i in result.ips if i.version == family), None)
        if ip is None:
            continue
        section: dict[str, Any] = {"ip": ip.address}
        if ip.gateway:
            section["gateway"] = ip.gateway
        routes = [
            {k: v for k, v in (("dst", r.dst), ("gw", r.gw)) if v is not None}
            for r in result.routes
            if r.network.version == family
        ]
        if routes:
            section["routes"] = routes
        out[key] = section
    if "ip4" not in out and "ip6" not in out:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"cannot convert result to version {version}: no valid IP addresses",
        )
    out["dns"] = result.dns.dump() if result.dns is not None else {}
    return out


def interfaces_of(result: Result) -> list[Interface]:
    return list(result.interfaces)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc}: {err.get('msg')}" if loc else str(err.get("msg"))
