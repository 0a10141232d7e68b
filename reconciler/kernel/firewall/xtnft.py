"""Cleanup of reference-shaped iptables rules living in the iptables-nft tables.

On a host whose `iptables` is the nft variant, the reference plugins write their
iptables-format rules into the nftables tables ``ip nat``/``ip6 nat``/``ip
filter``/``ip6 filter`` through the xtables compat layer. This module removes one
attachment's rules from there through our libnftables binding: list the table
once, delete by handle every rule whose jump/goto target is the attachment's
chain, then flush and delete that chain, all in one transaction. Matching is by
chain name only: iptables-nft stores comments as `xt` matches that libnftables
cannot print, so GC (which needs the container id from the comment) reads the
comments from `iptables-nft-save` and still deletes by exact chain target.
Nothing here ever creates a table or a chain. Also `legacy_present`, which tells
whether a legacy (x_tables) table exists without instantiating it.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from typing import Any

from reconciler.kernel.firewall import iptnft, nftables
from reconciler.kernel.firewall.base import BackendUnavailable, FirewallError, hash_name
from reconciler.kernel.firewall.nsexec import run_in_netns

log = logging.getLogger(__name__)
NAT = (("ip", 4), ("ip6", 6))
FORWARD_CHAIN = "CNI-FORWARD"
_COMMENT = re.compile(r'--comment "((?:[^"\\]|\\.)*)"')
_TARGET = re.compile(r"-[jg] (\S+)")


def legacy_present(netns: str | None, family: int, table: str) -> bool:
    """True if the legacy x_tables `table` of `family` exists in `netns` (read, never created)."""
    return run_in_netns(netns, lambda: legacy_here(family, table))


def legacy_here(family: int, table: str) -> bool:
    """`legacy_present` for the calling thread's netns."""
    name = "ip_tables_names" if family == 4 else "ip6_tables_names"
    try:
        with open(f"/proc/thread-self/net/{name}", encoding="ascii") as fh:
            return table in fh.read().split()
    except OSError:
        return False  # module not loaded: no legacy table at all


def _targets(rule: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for expr in rule.get("expr") or []:
        for verb in ("jump", "goto"):
            if isinstance(expr, dict) and isinstance(expr.get(verb), dict):
                out.add(str(expr[verb].get("target", "")))
    return out


def _drop_chains(view: nftables.TableView | None, chains: Iterable[str]) -> list[dict[str, Any]]:
    """Commands deleting every jump/goto to `chains`, then the chains themselves (if present)."""
    if view is None:
        return []
    doomed = {c for c in chains if c in view.chains}
    if not doomed:
        return []
    cmds: list[dict[str, Any]] = []
    for chain, rules in view.rules.items():
        if chain in doomed:
            continue
        cmds += [nftables.rule_delete(r) for r in rules if _targets(r) & doomed]
    for chain in sorted(doomed):
        ref = {"family": view.family, "table": view.name, "name": chain}
        cmds += [{"flush": {"chain": ref}}, {"delete": {"chain": ref}}]
    return cmds


def remove_chains(netns: str | None, table: str, chains: Iterable[str], families: Iterable[str] = ("ip", "ip6")) -> int:
    """Remove `chains` and every rule jumping to them from `<family> <table>`; returns rules+chains removed."""
    wanted = list(chains)

    def body(nft: nftables.Nft) -> int:
        total = 0
        for family in families:
            cmds = _drop_chains(nft.table(family, table, fresh=True), wanted)
            if cmds:
                nft.run(cmds)
                total += sum(1 for c in cmds if "delete" in c)
        return total

    try:
        return nftables.transact(netns, body)
    except BackendUnavailable:
        return 0


def masq_chain(network: str, container_id: str) -> str:
    return hash_name("CNI-", network + container_id, 28)


def portmap_chains(network: str, container_id: str) -> list[str]:
    text = network + container_id
    return [hash_name("CNI-DN-", text, 28), hash_name("CNI-SN-", text, 28)]


def teardown_masquerade(network: str, container_id: str, netns: str | None = None) -> int:
    """Remove the reference's ipMasq chain of this attachment (and its POSTROUTING jumps)."""
    return remove_chains(netns, "nat", [masq_chain(network, container_id)])


def teardown_portmap(network: str, container_id: str, netns: str | None = None) -> int:
    """Remove the reference's CNI-DN-/CNI-SN- chains of this attachment and the jumps to them."""
    return remove_chains(netns, "nat", portmap_chains(network, container_id))


def _saved(netns: str | None, family: int, table: str) -> str:
    """`iptables-nft-save -t table` inside `netns` ('' when the tool is missing or fails)."""
    try:
        return iptnft.save(netns, family, table)
    except FirewallError:
        return ""


def commented_ids(netns: str | None, family: int, table: str, chain: str, prefix: str) -> dict[str, set[str]]:
    """container id -> jump targets, from rules of `chain` whose comment is `<prefix><id>"`."""
    out: dict[str, set[str]] = {}
    for line in _saved(netns, family, table).splitlines():
        if not line.startswith(f"-A {chain} "):
            continue
        cmt, tgt = _COMMENT.search(line), _TARGET.search(line)
        if not cmt or not tgt:
            continue
        text = cmt.group(1).replace('\\"', '"')
        if text.startswith(prefix) and text.endswith('"'):
            out.setdefault(text[len(prefix):-1], set()).add(tgt.group(1))
    return out


def gc_masquerade(network: str, valid_ids: set[str], netns: str | None = None) -> int:
    """Remove reference ipMasq chains of `network` whose container id is not in `valid_ids`."""
    total = 0
    for nft_family, family in NAT:
        found = commented_ids(netns, family, "nat", "POSTROUTING", f'name: "{network}" id: "')
        dead = [masq_chain(network, cid) for cid, tgts in found.items()
                if cid not in valid_ids and masq_chain(network, cid) in tgts]
        if dead:
            total += remove_chains(netns, "nat", dead, (nft_family,))
    return total


def gc_portmap(network: str, valid_ids: set[str], netns: str | None = None) -> int:
    """Remove reference portmap chains of `network` whose container id is not in `valid_ids`."""
    total = 0
    for nft_family, family in NAT:
        found = commented_ids(netns, family, "nat", "CNI-HOSTPORT-DNAT", f'dnat name: "{network}" id: "')
        dead: list[str] = []
        for cid, tgts in found.items():
            if cid not in valid_ids and portmap_chains(network, cid)[0] in tgts:
                dead += portmap_chains(network, cid)
        if dead:
            total += remove_chains(netns, "nat", dead, (nft_family,))
    return total


def _forward_rule_ip(rule: dict[str, Any]) -> tuple[str, str] | None:
    """(saddr|daddr, address) if `rule` is the firewall plugin's per-IP ACCEPT shape, else None."""
    exprs = [e for e in rule.get("expr") or [] if not (isinstance(e, dict) and "counter" in e)]
    if not exprs or exprs[-1] != {"accept": None}:
        return None
    addr: tuple[str, str] | None = None
    rest: list[Any] = []
    for e in exprs[:-1]:
        m = e.get("match") if isinstance(e, dict) else None
        left = m.get("left", {}) if isinstance(m, dict) else {}
        if isinstance(left, dict) and "payload" in left and m.get("op") == "==" and addr is None \
                and left["payload"].get("field") in ("saddr", "daddr") and isinstance(m.get("right"), str):
            addr = (left["payload"]["field"], m["right"])
        else:
            rest.append(e)
    if addr is None:
        return None
    if addr[0] == "saddr" and all(_is_comment(e) for e in rest):
        return addr
    if addr[0] == "daddr" and rest and all(_is_comment(e) or _is_conntrack(e) for e in rest) \
            and any(_is_conntrack(e) for e in rest):
        return addr
    return None


def _is_comment(expr: Any) -> bool:
    return isinstance(expr, dict) and expr.get("xt", {}).get("name") == "comment"


def _is_conntrack(expr: Any) -> bool:
    if not isinstance(expr, dict):
        return False
    if expr.get("xt", {}).get("name") in ("conntrack", "state"):
        return True
    left = expr.get("match", {}).get("left", {}) if isinstance(expr.get("match"), dict) else {}
    return isinstance(left, dict) and left.get("ct", {}).get("key") == "state"


def teardown_filter(addresses: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address],
                    netns: str | None = None) -> int:
    """Remove the firewall plugin's per-IP ACCEPT rules for `addresses` from CNI-FORWARD (chains stay)."""
    ips = {ipaddress.ip_address(a) for a in addresses}

    def body(nft: nftables.Nft) -> int:
        total = 0
        for family in ("ip", "ip6"):
            view = nft.table(family, "filter", fresh=True)
            if view is None:
                continue
            doomed = []
            for rule in view.chain_rules(FORWARD_CHAIN):
                hit = _forward_rule_ip(rule)
                try:
                    if hit and ipaddress.ip_address(hit[1]) in ips:
                        doomed.append(nftables.rule_delete(rule))
                except ValueError:
                    continue
            if doomed:
                nft.run(doomed)
                total += len(doomed)
        return total

    try:
        return nftables.transact(netns, body)
    except BackendUnavailable:
        return 0
