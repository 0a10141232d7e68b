"""host-local configuration: ranges, range sets and requested addresses.

Pure: no I/O besides nothing at all. Every problem is a `CNIError` (code 7)
naming the field, e.g. ``ipam.ranges[0][1].rangeStart``. Canonicalisation
follows the reference (network address required, ``gateway`` defaults to
network+1, ``rangeEnd`` to the last host for IPv4 and the last address for
IPv6); unlike the reference, the network and IPv4 broadcast addresses are
never handed out even when ``rangeStart``/``rangeEnd`` include them.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from reconciler.cni.version import at_least
from reconciler.errors import INVALID_NETWORK_CONFIG, CNIError, config_error

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
DATA_DIR_ENV = "RECONCILER_IPAM_DATADIR"


def parse_ip(value: Any, field: str) -> IPAddr:
    """One address, plain or CIDR-suffixed (as the `ips` capability allows); v4-mapped folded to v4."""
    if not isinstance(value, str) or not value.strip():
        raise config_error(field, f"{value!r} is not an IP address")
    text = value.strip()
    try:
        addr: IPAddr = ipaddress.ip_interface(text).ip if "/" in text else ipaddress.ip_address(text)
    except ValueError as exc:
        raise config_error(field, f"{text!r} is not an IP address") from exc
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _optional_ip(raw: dict[str, Any], key: str, field: str) -> IPAddr | None:
    value = get_key(raw, key)
    if value is None or value == "":
        return None
    return parse_ip(value, f"{field}.{key}")


def get_key(raw: dict[str, Any], key: str) -> Any:
    """Case-insensitive key lookup (Go's encoding/json matching)."""
    if key in raw:
        return raw[key]
    low = key.lower()
    for k, v in raw.items():
        if isinstance(k, str) and k.lower() == low:
            return v
    return None


@dataclass(frozen=True)
class Range:
    """One canonical range: candidates are rangeStart..rangeEnd minus gateway, network, broadcast."""

    subnet: IPNet
    start: IPAddr
    end: IPAddr
    gateway: IPAddr | None

    @property
    def version(self) -> int:
        return self.subnet.version

    @cached_property
    def _bounds(self) -> tuple[int, int, int, frozenset[int]]:
        return (
            self.subnet.version,
            int(self.start),
            int(self.end),
            frozenset(int(a) for a in self._specials()),
        )

    def contains(self, ip: IPAddr) -> bool:
        version, lo, hi, _ = self._bounds
        return ip.version == version and lo <= int(ip) <= hi

    def overlaps(self, other: Range) -> bool:
        if self.version != other.version:
            return False
        return self.start <= other.end and other.start <= self.end  # type: ignore[operator]

    def usable(self, ip: IPAddr) -> bool:
        """In range and not the gateway, network or IPv4 broadcast address."""
        version, lo, hi, specials = self._bounds
        value = int(ip)
        return ip.version == version and lo <= value <= hi and value not in specials

    def size(self) -> int:
        """Number of usable candidates."""
        total = int(self.end) - int(self.start) + 1
        for special in self._specials():
            if self.contains(special):
                total -= 1
        return total

    def _specials(self) -> set[IPAddr]:
        out: set[IPAddr] = {self.subnet.network_address}
        if self.version == 4:
            out.add(self.subnet.broadcast_address)
        if self.gateway is not None:
            out.add(self.gateway)
        return out

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


@dataclass(frozen=True)
class RangeSet:
    """Ranges of one family that together yield one address per ADD."""

    ranges: tuple[Range, ...]

    @property
    def version(self) -> int:
        return self.ranges[0].version

    def range_for(self, ip: IPAddr) -> Range | None:
        return next((r for r in self.ranges if r.contains(ip)), None)

    def contains(self, ip: IPAddr) -> bool:
        return self.range_for(ip) is not None

    def overlaps(self, other: RangeSet) -> bool:
        return any(a.overlaps(b) for a in self.ranges for b in other.ranges)

    def size(self) -> int:
        return sum(r.size() for r in self.ranges)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.ranges)


def parse_range(raw: Any, field: str) -> Range:
    """Canonicalise one range object (the reference's Range.Canonicalize)."""
    if not isinstance(raw, dict):
        raise config_error(field, "must be an object with a subnet")
    subnet_raw = get_key(raw, "subnet")
    if not isinstance(subnet_raw, str) or "/" not in subnet_raw:
        raise config_error(f"{field}.subnet", f"{subnet_raw!r} is not a CIDR subnet")
    try:
        iface = ipaddress.ip_interface(subnet_raw.strip())
    except ValueError as exc:
        raise config_error(f"{field}.subnet", f"invalid CIDR {subnet_raw!r}") from exc
    subnet = iface.network
    if subnet.prefixlen > subnet.max_prefixlen - 2:
        raise config_error(f"{field}.subnet", f"network {subnet} too small to allocate from")
    if iface.ip != subnet.network_address:
        raise config_error(
            f"{field}.subnet",
            f"network has host bits set: for a subnet mask of length {subnet.prefixlen} "
            f"the network address is {subnet.network_address}",
        )
    values: dict[str, IPAddr | None] = {}
    for key in ("gateway", "rangeStart", "rangeEnd"):
        ip = _optional_ip(raw, key, field)
        if ip is not None and ip.version != subnet.version:
            raise config_error(f"{field}.{key}", f"{ip} is not an IPv{subnet.version} address like {subnet}")
        values[key] = ip
    gateway = values["gateway"] or subnet.network_address + 1
    start = values["rangeStart"] or subnet.network_address + 1
    default_end = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address
    end = values["rangeEnd"] or default_end
    for key, ip in (("rangeStart", start), ("rangeEnd", end)):
        if ip not in subnet:
            raise config_error(f"{field}.{key}", f"{ip} not in network {subnet}")
    if start > end:  # type: ignore[operator]
        raise config_error(f"{field}.rangeEnd", f"{end} is before rangeStart {start}")
    return Range(subnet=subnet, start=start, end=end, gateway=gateway)  # type: ignore[arg-type]


def parse_range_set(raw: Any, field: str) -> RangeSet:
    if not isinstance(raw, list) or not raw:
        raise config_error(field, "must be a non-empty list of ranges")
    ranges = tuple(parse_range(item, f"{field}[{i}]") for i, item in enumerate(raw))
    for i, r in enumerate(ranges[1:], start=1):
        if r.version != ranges[0].version:
            raise config_error(f"{field}[{i}]", "mixed address families in one range set")
    for i, a in enumerate(ranges):
        for j in range(i + 1, len(ranges)):
            if a.overlaps(ranges[j]):
                raise config_error(f"{field}[{j}]", f"subnets {a} and {ranges[j]} overlap")
    return RangeSet(ranges)


_PARSED: dict[str, tuple[RangeSet, ...]] = {}  # canonical JSON of the inputs -> parsed range sets
_PARSED_MAX = 64


def parse_range_sets(ipam: dict[str, Any], runtime_ranges: Any, cni_version: str) -> tuple[RangeSet, ...]:
    """The effective list: runtimeConfig.ipRanges, then the legacy single range, then `ranges`.

    A long-lived process sees the same few configurations again and again: successful parses
    are kept (the result is immutable), keyed by the inputs' canonical JSON.
    """
    try:
        key = json.dumps([ipam, runtime_ranges, cni_version], sort_keys=True)
    except (TypeError, ValueError):  # not from JSON: nothing to key on
        return _parse_range_sets(ipam, runtime_ranges, cni_version)
    sets = _PARSED.get(key)
    if sets is None:
        sets = _parse_range_sets(ipam, runtime_ranges, cni_version)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[key] = sets
    return sets


def _parse_range_sets(ipam: dict[str, Any], runtime_ranges: Any, cni_version: str) -> tuple[RangeSet, ...]:
    sets: list[RangeSet] = []
    if runtime_ranges:
        if not isinstance(runtime_ranges, list):
            raise config_error("runtimeConfig.ipRanges", "must be a list of range sets")
        sets += [parse_range_set(rs, f"runtimeConfig.ipRanges[{i}]") for i, rs in enumerate(runtime_ranges)]
    if get_key(ipam, "subnet") not in (None, ""):
        sets.append(RangeSet((parse_range(ipam, "ipam"),)))
    configured = get_key(ipam, "ranges")
    if configured is not None:
        if not isinstance(configured, list):
            raise config_error("ipam.ranges", "must be a list of range sets")
        sets += [parse_range_set(rs, f"ipam.ranges[{i}]") for i, rs in enumerate(configured)]
    if not sets:
        raise config_error("ipam.ranges", "no IP ranges specified")
    for family in (4, 6):
        if sum(1 for s in sets if s.version == family) > 1 and not at_least(cni_version, "0.3.0"):
            raise config_error(
                "ipam.ranges", f"CNI version {cni_version} does not support more than 1 address per family"
            )
    for i, a in enumerate(sets):
        for j in range(i + 1, len(sets)):
            if a.overlaps(sets[j]):
                raise config_error("ipam.ranges", f"range set {i} overlaps with {j}")
    return tuple(sets)


def requested_ips(config: dict[str, Any], cni_args: dict[str, str]) -> list[IPAddr]:
    """CNI_ARGS `IP` (comma list), then `args.cni.ips`, then `runtimeConfig.ips`, de-duplicated."""
    out: list[IPAddr] = []
    raw_ip = cni_args.get("IP", "")
    for item in (p for p in raw_ip.split(",") if p.strip()):
        out.append(parse_ip(item, "CNI_ARGS IP"))
    args = get_key(config, "args")
    cni = get_key(args, "cni") if isinstance(args, dict) else None
    ips = get_key(cni, "ips") if isinstance(cni, dict) else None
    out += _ip_list(ips, "args.cni.ips")
    runtime = get_key(config, "runtimeConfig")
    out += _ip_list(get_key(runtime, "ips") if isinstance(runtime, dict) else None, "runtimeConfig.ips")
    seen: set[IPAddr] = set()
    return [ip for ip in out if not (ip in seen or seen.add(ip))]  # type: ignore[func-returns-value]


def _ip_list(value: Any, field: str) -> list[IPAddr]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise config_error(field, "must be a list of IP addresses")
    return [parse_ip(v, f"{field}[{i}]") for i, v in enumerate(value)]


@dataclass(frozen=True)
class HostLocalConfig:
    """Everything one host-local call needs, canonical."""

    network: str
    cni_version: str
    range_sets: tuple[RangeSet, ...]
    data_dir: str
    routes: tuple[dict[str, Any], ...]
    resolv_conf: str
    requested: tuple[IPAddr, ...]

    def iter_sets(self) -> Iterator[tuple[int, RangeSet]]:
        return iter(enumerate(self.range_sets))


def load(config: dict[str, Any], cni_args: dict[str, str], *, with_requests: bool = True) -> HostLocalConfig:
    """Decode the whole stdin config for host-local."""
    ipam = get_key(config, "ipam")
    if not isinstance(ipam, dict):
        raise CNIError(INVALID_NETWORK_CONFIG, "IPAM config missing 'ipam' key")
    runtime = get_key(config, "runtimeConfig")
    runtime_ranges = get_key(runtime, "ipRanges") if isinstance(runtime, dict) else None
    version = str(config.get("cniVersion") or "0.1.0")
    sets = parse_range_sets(ipam, runtime_ranges, version)
    routes = get_key(ipam, "routes") or []
    if not isinstance(routes, list) or not all(isinstance(r, dict) for r in routes):
        raise config_error("ipam.routes", "must be a list of route objects")
    data_dir = get_key(ipam, "dataDir") or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    if not isinstance(data_dir, str):
        raise config_error("ipam.dataDir", "must be a path")
    resolv = get_key(ipam, "resolvConf") or ""
    if not isinstance(resolv, str):
        raise config_error("ipam.resolvConf", "must be a path")
    return HostLocalConfig(
        network=str(config.get("name") or ""),
        cni_version=version,
        range_sets=sets,
        data_dir=data_dir,
        routes=tuple(routes),
        resolv_conf=resolv,
        requested=tuple(requested_ips(config, cni_args)) if with_requests else (),
    )


def match_requests(sets: Sequence[RangeSet], requested: Sequence[IPAddr]) -> list[IPAddr | None]:
    """Assign each requested IP to the first range set containing it; leftovers are an error."""
    out: list[IPAddr | None] = [None] * len(sets)
    left: list[IPAddr] = []
    for ip in requested:
        idx = next((i for i, s in enumerate(sets) if out[i] is None and s.contains(ip)), None)
        if idx is None:
            left.append(ip)
        else:
            out[idx] = ip
    if left:
        raise config_error("requested IPs (CNI_ARGS IP, args.cni.ips, runtimeConfig.ips)",
                           "not in any range: failed to allocate all requested IPs: " + " ".join(str(ip) for ip in left))
    return out
