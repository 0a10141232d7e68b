"""Garbage collection that never frees an address in use.

Order matters (whereabouts#208, calico#5044): reservations (cache entries and
host-local allocation files) are read *before* liveness (our records, the
specs, the journal), and every candidate is re-read right before it is freed.
A candidate is freed only after it stayed unreferenced for the grace period:
the first GC that sees it writes down when, a later one frees it.
Networks with `disableGC` are skipped entirely; networks that are not in our
specs are someone else's and are never touched. Within our networks, a cache
entry we hold no record of belongs to another runtime: it is left alone while
its namespace exists, and only a dead one (namespace gone) becomes a candidate.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.cni import cache
from reconciler.cni.chain import RuntimeConf
from reconciler.engine.apply import Engine
from reconciler.engine.inventory import read_json, write_json
from reconciler.engine.netconf import with_data_dir
from reconciler.engine.specs import Specs
from reconciler.errors import CNIError

log = logging.getLogger(__name__)


@dataclass
class GCReport:
    freed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.__dict__.items()}


def allocations(data_dir: str, network: str) -> dict[str, tuple[str, str]]:
    """host-local's store: IP -> (containerID, ifname)."""
    out: dict[str, tuple[str, str]] = {}
    directory = Path(data_dir) / network
    try:
        names = os.listdir(directory)
    except OSError:
        return out
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            continue
        try:
            lines = (directory / name).read_text().replace("\r", "").split("\n")
        except OSError:
            continue
        out[name] = (lines[0].strip(), lines[1].strip() if len(lines) > 1 and lines[1].strip() else "eth0")
    return out


def _ipam_dirs(engine: Engine, specs: Specs, network: str) -> list[str]:
    dirs = []
    for plugin in specs.networks[network].plugins:
        ipam = plugin.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type") == "host-local":
            dirs.append(str(ipam.get("dataDir") or engine.data_dir))
    return dirs


def _live(engine: Engine, specs: Specs) -> set[tuple[str, str, str]]:
    """Everything that may legitimately hold an address: desired, recorded, in flight, protected."""
    live = {(a.network, a.id, a.ifname) for a in specs.attachments.values()}
    live |= {(r.network, r.id, r.ifname) for r in engine.inventory.records().values()}
    live |= {(i.network, i.container_id, i.ifname) for i in engine.journal.pending()}
    live |= {tuple(k.split("/", 2)) for k in specs.protected_keys}  # type: ignore[misc]
    return live


def run_gc(engine: Engine, grace: float) -> GCReport:
    """One GC pass. The caller holds the state lock."""
    report = GCReport()
    engine.inventory.ensure()
    cand_file = engine.inventory.root / "gc-candidates.json"
    seen: dict[str, float] = read_json(cand_file, {})
    now = time.time()
    specs = engine.load()
    # 1. reservations first
    entries = {(e.network_name, e.container_id, e.ifname): e for e in cache.list_entries(engine.state_dir)}
    allocs = {
        (net, d): allocations(d, net) for net in specs.networks for d in _ipam_dirs(engine, specs, net)
    }
    # 2. then liveness
    live = _live(engine, specs)
    still_seen: dict[str, float] = {}
    for network, netlist in sorted(specs.networks.items()):
        if netlist.disable_gc:
            report.skipped.append(f"{network}: disableGC")
            continue
        if network in specs.protected_networks:
            report.skipped.append(f"{network}: its spec file failed to load")
            continue
        config = with_data_dir(netlist, engine.data_dir)
        keep: set[tuple[str, str]] = {(cid, ifn) for net, cid, ifn in live if net == network}
        freeable: list[tuple[str, str, str]] = []  # (candidate id, cid, ifname)
        orphans: list[tuple[str, str, str]] = []
        for (n, c, i), entry in entries.items():
            if n != network or (n, c, i) in live:
                continue
            if entry.netns and os.path.exists(entry.netns):
                keep.add((c, i))  # someone else's attachment, alive: never touched
                continue
            orphans.append((f"cache:{n}/{c}/{i}", c, i))  # its namespace is gone: a dead attachment
        for (net, _dir), store in allocs.items():
            if net != network:
                continue
            for ip, (c, i) in store.items():
                if (net, c, i) not in live and (net, c, i) not in entries:
                    orphans.append((f"alloc:{net}/{ip}", c, i))  # reserved, but nobody's result holds it
        for cid_key, cid, ifname in orphans:
            first = seen.get(cid_key, now)
            if now - first >= grace:
                freeable.append((cid_key, cid, ifname))
            else:
                still_seen[cid_key] = first
                keep.add((cid, ifname))
                report.pending.append(cid_key)
        # 3. re-read before freeing: anything that became live in the meantime is spared
        live_again = _live(engine, engine.load())
        for cid_key, cid, ifname in freeable:
            if (network, cid, ifname) in live_again:
                keep.add((cid, ifname))
                continue
            try:
                entry = cache.read(engine.state_dir, network, cid, ifname)
                if entry is not None and entry.config:
                    engine.runner.delete_cached(entry)
                else:
                    engine.runner.delete(config, RuntimeConf(cid, "", ifname))
                report.freed.append(cid_key)
            except CNIError as err:
                report.errors.append(f"{cid_key}: {err}")
                still_seen[cid_key] = seen.get(cid_key, now)
        for err in engine.runner.gc(config, sorted(keep)):
            report.errors.append(f"{network}: GC: {err}")
    write_json(cand_file, still_seen)
    needed = {a.netns for a in specs.attachments.values()} | {r.netns for r in engine.inventory.records().values()}
    for name in sorted(engine.inventory.namespaces() - needed):
        try:
            engine.drop_namespace(name)
            report.namespaces.append(name)
        except OSError as err:
            report.errors.append(f"namespace {name}: {err}")
    log.debug("gc: %s", json.dumps(report.to_json()))
    return report
