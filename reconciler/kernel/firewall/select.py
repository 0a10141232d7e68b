"""Choosing the firewall backend the way the host does.

Order of precedence:
1. a backend forced by config (`backend` / `ipMasqBackend`);
2. the backend that already holds rules of this attachment (never split one
   attachment across both);
3. the backend that already holds CNI rules on this host (legacy `CNI-*`
   chains in the nat table, or our nftables tables);
4. the `iptables` alternative in use (`iptables-legacy` -> iptables,
   `iptables-nft` -> nftables, since python-iptables only drives legacy tables
   and mixing legacy rules into an nf_tables host is what operators trip on);
5. whichever is usable (iptables first, as the reference does).
The reference's own default is "iptables unless only nftables works"; ours
differs in step 4 and says so in the log line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from reconciler.kernel.firewall import iptables, nftables
from reconciler.kernel.firewall.base import BACKENDS, IPTABLES, NFTABLES, BackendUnavailable, alternative

log = logging.getLogger(__name__)
NFT_TABLES = (("inet", "cni_plugins_masquerade"), ("ip", "cni_hostport"), ("ip6", "cni_hostport"))


def existing(netns: str | None = None) -> str | None:
    """The backend that already holds CNI rules in this netns, if exactly one does."""
    legacy = False
    try:
        legacy = iptables.transact(netns, 4, "nat", lambda s: any(c.startswith("CNI-") for c in s.chains()),
                                    existing_only=True)
    except (BackendUnavailable, OSError):
        legacy = False
    nft = False
    try:
        nft = nftables.transact(netns, lambda n: any(n.table(f, t) is not None for f, t in NFT_TABLES))
    except (BackendUnavailable, OSError):
        nft = False
    if legacy != nft:
        return IPTABLES if legacy else NFTABLES
    return None


def choose(
    forced: str | None,
    netns: str | None = None,
    holds: Callable[[str], bool] | None = None,
    what: str = "",
) -> str:
    """Pick the backend for one attachment; `holds(backend)` says whether it already has its rules."""
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"backend: unknown firewall backend {forced!r} (want iptables or nftables)")
        return forced
    with nftables.shared_reads(), iptables.shared_reads():  # one listing per table for both questions
        held = _holder(holds, what) if holds is not None else None
        found = held or existing(netns)
    if held:
        return held
    if found:
        log.info("%s: firewall backend %s (existing CNI rules)", what, found)
        return found
    alt = alternative()
    if alt == IPTABLES and iptables.usable(4, netns):
        log.info("%s: firewall backend iptables (iptables-legacy alternative)", what)
        return IPTABLES
    if alt == NFTABLES and nftables.usable(netns):
        log.info("%s: firewall backend nftables (iptables-nft alternative)", what)
        return NFTABLES
    if iptables.usable(4, netns):
        return IPTABLES
    if nftables.usable(netns):
        return NFTABLES
    raise BackendUnavailable("neither iptables-legacy nor nftables is usable")


def _holder(holds: Callable[[str], bool], what: str) -> str | None:
    """The backend that already holds the attachment's rules, if any."""
    for backend in BACKENDS:
        try:
            if holds(backend):
                log.debug("%s: backend %s (already holds its rules)", what, backend)
                return backend
        except (BackendUnavailable, OSError):
            continue
    return None


def describe() -> dict[str, str | None]:
    """What `reconciler plugins list` reports: the default backend and why."""
    alt = alternative()
    return {"default": alt or IPTABLES, "iptablesAlternative": alt}
