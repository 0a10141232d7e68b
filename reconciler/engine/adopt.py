"""Records rebuilt from the result cache, for attachments whose record is missing.

The records file can be lost or deleted (after it was found corrupt, say) while the attachments,
their result cache entries and their address reservations are all still there. ADDing such an
attachment again fails (its interface exists) and must not be undone by a DEL, which would remove
the live one: so an attachment the specs want, with no record, whose cache entry says it was added
with exactly the config, namespace, args and capabilities the specs give it now, gets its record
back from that entry. The pass then judges it as any recorded attachment: in sync, or repaired with
its addresses. Anything that differs is left to ADD, which reports the conflict and removes nothing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from reconciler.cni import cache
from reconciler.cni.conf import NetworkConfigList
from reconciler.engine.inventory import Record
from reconciler.engine.specs import Attachment, Specs, network_hash

log = logging.getLogger(__name__)


def new_record(att: Attachment, network: NetworkConfigList, ips: list[str], owns_netns: bool) -> Record:
    """The record of `att` as applied with `network` (the spec's list, before dataDir is filled in)."""
    return Record(
        key=att.key, network=att.network, id=att.id, ifname=att.ifname, netns=att.netns,
        netns_path=att.netns_path, owns_netns=owns_netns, file=os.path.abspath(att.file),
        network_file=os.path.abspath(network.source), fingerprint=att.fingerprint(network), ips=ips,
        applied_at=time.time(), network_hash=network_hash(network),
    )


def from_cache(unrecorded: list[Attachment], specs: Specs, cache_dir: str,
               netlist_for: Callable[[Attachment], NetworkConfigList], owned: set[str]) -> dict[str, Record]:
    """Records for the `unrecorded` desired attachments whose cache entry matches the spec.

    `netlist_for(att)`: the config an ADD of `att` would run with (what the entry must hold);
    `owned`: the namespaces the inventory has claimed."""
    out: dict[str, Record] = {}
    for att in unrecorded:
        entry = cache.read(cache_dir, att.network, att.id, att.ifname)
        if entry is None or not isinstance(entry.result, dict):
            continue
        if (entry.config != netlist_for(att).raw or entry.netns != att.netns_path
                or [tuple(p) for p in entry.cni_args] != [tuple(p) for p in att.args]
                or entry.capability_args != att.capabilities):
            continue
        ips = [str(ip.get("address")) for ip in entry.result.get("ips") or [] if isinstance(ip, dict)]
        out[att.key] = new_record(att, specs.networks[att.network], ips, att.owns_netns or att.netns in owned)
        log.warning("%s: no record of it, but its result cache entry matches the spec: record taken from it", att.key)
    return out
