"""The live snapshot of a pass, and what drifted for each recorded attachment.

The kernel is read once per namespace (plus once for the host) and every
attachment of the pass is judged against that snapshot: its namespace, its
interface, the addresses its cached result gave it, the bridge it hangs on.
Only when those hold do we spend a CNI CHECK on it (the plugins' own verdict:
firewall chains, routes, peers), so each drift is named precisely.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler import ipparse
from reconciler.cni import cache
from reconciler.cni.chain import Runner, RuntimeConf
from reconciler.cni.conf import NetworkConfigList, conflist_from_bytes
from reconciler.engine.inventory import Record
from reconciler.errors import CNIError
from reconciler.kernel import namespaces
from reconciler.kernel.namespaces import LinkState

log = logging.getLogger(__name__)


@dataclass
class Observation:
    live_namespaces: set[str] = field(default_factory=set)
    host: dict[str, LinkState] | None = None  # None: not read (verify relies on CHECK for the host side)
    netns: dict[str, dict[str, LinkState] | None] = field(default_factory=dict)
    drift: dict[str, list[str]] = field(default_factory=dict)

    def links_in(self, path: str) -> dict[str, LinkState] | None:
        """Links of a namespace, read at most once per pass (None when it is gone)."""
        if path not in self.netns:
            try:
                self.netns[path] = namespaces.snapshot(path) if namespaces.exists(path) else None
            except OSError:
                self.netns[path] = None
        return self.netns[path]


def expected_addresses(result: dict[str, Any], ifname: str) -> list[str]:
    """Addresses the cached result put on the container interface `ifname`."""
    ifaces = result.get("interfaces") or []
    out = []
    for ip in result.get("ips") or []:
        idx = ip.get("interface")
        if idx is not None and 0 <= idx < len(ifaces):
            iface = ifaces[idx]
            if iface.get("name") != ifname or not iface.get("sandbox"):
                continue
        try:
            out.append(ipparse.canonical_interface(ip["address"]))
        except (KeyError, ValueError):
            continue
    return out


def _cached_plugins(config: bytes) -> list[Any]:
    """The plugin objects of a cached config (a list or a single conf); [] when it does not parse."""
    try:
        data = json.loads(config or b"{}")
    except ValueError:
        return []
    return list(data.get("plugins") or [data]) if isinstance(data, dict) else []


def bridge_of(plugins: Sequence[Any]) -> str | None:
    """The bridge a chain attaches to (its first plugin's, when that is `bridge`), else None."""
    first = plugins[0] if plugins else None
    if isinstance(first, dict) and first.get("type") == "bridge":
        return str(first.get("bridge") or "cni0")
    return None


# an ADD of this pass: the cache entry it wrote and the config list it ran, as they are in memory
Fresh = tuple[cache.CacheEntry, NetworkConfigList]


def judge(rec: Record, obs: Observation, runner: Runner, deep: bool = True, fresh: Fresh | None = None) -> list[str]:
    """Everything wrong with one recorded attachment ([] = in sync); `fresh` spares re-reading and
    re-parsing what an ADD of this process has just written."""
    entry = fresh[0] if fresh is not None else cache.read(runner.cache_dir, rec.network, rec.id, rec.ifname)
    if entry is None or entry.result is None:
        return [f"result cache entry for {rec.key} is missing"]
    links = obs.links_in(rec.netns_path)
    if links is None:
        return [f"netns {rec.netns} is gone"]
    drift: list[str] = []
    link = links.get(rec.ifname)
    if link is None:
        drift.append(f"interface {rec.ifname} missing in netns {rec.netns}")
    else:
        if not link.up:
            drift.append(f"interface {rec.ifname} in netns {rec.netns} is down")
        have = set(link.addresses)  # already in ip_interface's normal form
        for addr in expected_addresses(entry.result, rec.ifname):
            if addr not in have:
                drift.append(f"address {addr} missing on {rec.ifname} in netns {rec.netns}")
    bridge = bridge_of(fresh[1].plugins if fresh is not None else _cached_plugins(entry.config))
    if bridge and obs.host is not None and bridge not in obs.host:
        drift.append(f"bridge {bridge} missing on the host")
    if drift or not deep:
        return drift
    try:
        netlist = fresh[1] if fresh is not None else conflist_from_bytes(entry.config, f"cache:{rec.network}")
        rt = RuntimeConf(rec.id, entry.netns or rec.netns_path, rec.ifname, tuple(entry.cni_args), entry.capability_args)
        runner.check(netlist, rt, entry)
    except CNIError as err:
        detail = f": {err.details}" if err.details else ""
        drift.append(f"CHECK failed: {err.msg}{detail}")
    return drift


def observe(
    records: Iterable[Record],
    runner: Runner,
    deep: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Observation:
    """Read the host and every recorded attachment's namespace once; judge each attachment."""
    obs = Observation(live_namespaces=set(namespaces.list_names()))
    try:
        obs.host = namespaces.snapshot(None)
    except OSError as err:
        log.warning("cannot read host links: %s", err)
    for rec in records:
        obs.drift[rec.key] = judge(rec, obs, runner, deep)
        if progress:
            progress(rec.key)
    return obs
