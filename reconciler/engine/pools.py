"""Allocation pool usage per network: used / total addresses of each host-local pool.

`total` counts the addresses host-local may hand out (its ranges minus the
network, broadcast and gateway addresses); `used` counts the reservation files
in the network's store directory that fall inside those ranges. Networks whose
IPAM is not host-local (dhcp, static) have no pool and are left out. A store
directory in the state that no spec describes any more is reported with an
unknown total, so leaked reservations stay visible.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reconciler.cni.conf import NetworkConfigList
from reconciler.errors import CNIError

log = logging.getLogger(__name__)


@dataclass
class PoolUsage:
    network: str
    used: int
    total: int | None  # None: no spec describes this store any more
    data_dir: str

    @property
    def ratio(self) -> float | None:
        return self.used / self.total if self.total else None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = None if self.ratio is None else round(self.ratio, 4)
        return out


def _reserved(directory: Path) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in names:
        try:
            out.append(ipaddress.ip_address(name))
        except ValueError:
            continue  # lock, last_reserved_ip.N, temporary files
    return out


def _host_local_ipams(netlist: NetworkConfigList) -> list[dict[str, Any]]:
    return [
        p["ipam"] for p in netlist.plugins
        if isinstance(p.get("ipam"), dict) and p["ipam"].get("type") == "host-local"
    ]


def network_usage(netlist: NetworkConfigList, default_data_dir: str) -> PoolUsage | None:
    """Usage of one network's host-local pool, or None when it has none (or its IPAM config is invalid)."""
    from reconciler.plugins.ipam.host_local.config import parse_range_sets

    ipams = _host_local_ipams(netlist)
    if not ipams:
        return None
    ipam = ipams[0]
    try:
        sets = parse_range_sets(ipam, None, netlist.cni_version or "1.0.0")
    except CNIError as err:
        log.debug("%s: no pool figures: %s", netlist.name, err)
        return None
    data_dir = str(ipam.get("dataDir") or default_data_dir)
    reserved = _reserved(Path(data_dir) / netlist.name)
    used = sum(1 for ip in reserved if any(rs.contains(ip) for rs in sets))
    return PoolUsage(netlist.name, used, sum(rs.size() for rs in sets), data_dir)


def usage(networks: dict[str, NetworkConfigList], data_dir: str | Path) -> list[PoolUsage]:
    """Pool usage of every network in `networks`, plus orphaned stores under `data_dir`."""
    out = []
    for name in sorted(networks):
        found = network_usage(networks[name], str(data_dir))
        if found is not None:
            out.append(found)
    known = {u.network for u in out} | set(networks)
    try:
        leftovers = sorted(d for d in os.listdir(data_dir) if d not in known and not d.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        leftovers = []
    for name in leftovers:
        reserved = _reserved(Path(data_dir) / name)
        if reserved:
            out.append(PoolUsage(name, len(reserved), None, str(data_dir)))
    return out


def network_configs(specs_dir: str | Path) -> dict[str, NetworkConfigList]:
    """Only the network configs of a specs directory (attachment files are not read: this runs every pass)."""
    from reconciler.cni.conf import conflist_from_bytes
    from reconciler.engine.specs import NETWORK_EXTENSIONS

    out: dict[str, NetworkConfigList] = {}
    root = Path(specs_dir)
    if not root.is_dir():
        return out
    for path in sorted(root.rglob("*")):
        if path.suffix not in NETWORK_EXTENSIONS or path.name.startswith(".") or not path.is_file():
            continue
        try:
            netlist = conflist_from_bytes(path.read_bytes(), str(path))
        except (CNIError, OSError):
            continue  # reported by the spec loader; no pool figures for it
        out.setdefault(netlist.name, netlist)
    return out


def usage_for(specs_dir: str | Path, state_dir: str | Path) -> list[PoolUsage]:
    """Pool usage for a specs directory and the reconciler's state directory."""
    return usage(network_configs(specs_dir), Path(state_dir) / "networks")


def render_usage(pools: list[PoolUsage]) -> str:
    """`POOL  USED/TOTAL  %` lines for `reconciler status`."""
    if not pools:
        return "Pools: none (no host-local networks)."
    lines = ["POOL USAGE"]
    width = max(len(p.network) for p in pools)
    for p in pools:
        total = "?" if p.total is None else str(p.total)
        pct = "" if p.ratio is None else f"  {p.ratio * 100:.1f}%"
        note = "  (no spec describes this store)" if p.total is None else ""
        lines.append(f"  {p.network.ljust(width)}  {p.used}/{total}{pct}{note}")
    return "\n".join(lines)


def health_line(data: dict[str, Any], pools: list[PoolUsage]) -> str:
    """One line an operator reads first: overall verdict, counts, the fullest pool."""
    rows = data.get("attachments") or []
    bad = [r for r in rows if r.get("last_result") in ("failed", "failing")]
    kept = [r for r in rows if r.get("last_result") == "kept"]
    applied = sum(1 for r in rows if r.get("applied"))
    last = data.get("last_pass") or {}
    spec_errors = len(last.get("spec_errors") or [])
    if not last:
        verdict = "UNKNOWN (no pass has run yet)"
    elif bad or spec_errors:
        verdict = "DEGRADED"
    elif last.get("converged"):
        verdict = "HEALTHY"
    else:
        verdict = "DEGRADED"
    parts = [f"{applied}/{len(rows)} attachments applied", f"{len(bad)} failing"]
    if kept:
        parts.append(f"{len(kept)} kept (broken spec)")
    if spec_errors:
        parts.append(f"{spec_errors} spec error(s)")
    full = [p for p in pools if p.ratio is not None]
    if full:
        top = max(full, key=lambda p: p.ratio or 0.0)
        parts.append(f"fullest pool {top.network} {top.used}/{top.total}")
    return f"Health: {verdict}: " + ", ".join(parts)


def with_pools(data: dict[str, Any], specs_dir: str | Path, state_dir: str | Path) -> list[PoolUsage]:
    """Add `pools` and the `health` line to `reconciler status` data; returns the usage for rendering."""
    pools = usage_for(specs_dir, state_dir)
    data["pools"] = [p.to_json() for p in pools]
    data["health"] = health_line(data, pools)
    return pools
