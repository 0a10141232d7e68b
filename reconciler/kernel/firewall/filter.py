"""The firewall plugin's rules (filter table, iptables-legacy), in the reference's layout.

  FORWARD      (first) -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD
  CNI-FORWARD  (first) -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN
  CNI-FORWARD  per container IP:
               -d IP/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
               -s IP/32 -j ACCEPT
CNI-ADMIN belongs to the operator: it is created empty if missing and never flushed or
deleted. Our per-IP rules also carry ``name: "<net>" id: "<id>"`` (the reference's have no
comment), so GC can find them; DEL removes both forms, so state made by the reference
plugin is cleaned up too. Chains are never deleted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from reconciler.kernel.firewall import iptables
from reconciler.kernel.firewall.base import BackendUnavailable, RuleDrift

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
PRIV = "CNI-FORWARD"
ADMIN = "CNI-ADMIN"


def comment(network: str, container_id: str) -> str:
    return f'name: "{network}" id: "{container_id}"'


def priv_rule() -> list[str]:
    return ["-m", "comment", "--comment", "CNI firewall plugin rules", "-j", PRIV]


def admin_rule(admin: str) -> list[str]:
    return ["-m", "comment", "--comment", "CNI firewall plugin admin overrides", "-j", admin]


def ip_rules(ip: IP, cmt: str | None) -> list[list[str]]:
    tag = ["-m", "comment", "--comment", cmt] if cmt else []
    return [["-d", str(ip), "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", *tag, "-j", "ACCEPT"],
            ["-s", str(ip), *tag, "-j", "ACCEPT"]]


def _by_family(addresses: Sequence[IP]) -> dict[int, list[IP]]:
    out: dict[int, list[IP]] = {}
    for ip in addresses:
        out.setdefault(ip.version, []).append(ip)
    return out


def setup(network: str, container_id: str, addresses: Sequence[IP], admin: str = ADMIN,
          netns: str | None = None) -> None:
    """Allow forwarding to/from `addresses` (per family of each address)."""
    cmt = comment(network, container_id)
    for family, ips in sorted(_by_family(addresses).items()):

        def apply(s: iptables.Session, ips: list[IP] = ips) -> None:
            s.ensure_chain(PRIV)
            s.ensure_chain(admin)
            if not s.has("FORWARD", priv_rule()):
                s.insert_unique("FORWARD", priv_rule(), 0)
            if not s.has(PRIV, admin_rule(admin)):
                s.insert_unique(PRIV, admin_rule(admin), 0)
            for ip in ips:
                for args in ip_rules(ip, cmt):
                    s.append_unique(PRIV, args)

        iptables.transact(netns, family, "filter", apply)


def teardown(network: str, container_id: str, addresses: Sequence[IP], netns: str | None = None) -> None:
    """Remove the per-IP rules (ours and the reference's uncommented form); chains stay."""
    cmt = comment(network, container_id)
    for family, ips in sorted(_by_family(addresses).items()):

        def remove(s: iptables.Session, ips: list[IP] = ips) -> None:
            if not s.has_chain(PRIV):
                return
            for ip in ips:
                for args in ip_rules(ip, cmt) + ip_rules(ip, None):
                    s.delete(PRIV, args)

        try:
            iptables.transact(netns, family, "filter", remove)
        except BackendUnavailable:
            continue


def check(network: str, container_id: str, addresses: Sequence[IP], admin: str = ADMIN,
          netns: str | None = None) -> None:
    cmt = comment(network, container_id)
    for family, ips in sorted(_by_family(addresses).items()):

        def verify(s: iptables.Session, ips: list[IP] = ips) -> None:
            for chain in (PRIV, admin):
                if not s.has_chain(chain):
                    raise RuleDrift(f"firewall: chain {chain} missing from IPv{s.family} filter table")
            if not s.has("FORWARD", priv_rule()):
                raise RuleDrift(f"firewall: rule missing in FORWARD: {iptables.render(priv_rule())}")
            if not s.has(PRIV, admin_rule(admin)):
                raise RuleDrift(f"firewall: rule missing in {PRIV}: {iptables.render(admin_rule(admin))}")
            for ip in ips:
                for mine, theirs in zip(ip_rules(ip, cmt), ip_rules(ip, None), strict=True):
                    if not (s.has(PRIV, mine) or s.has(PRIV, theirs)):
                        raise RuleDrift(f"firewall: rule missing in {PRIV}: {iptables.render(mine)}")

        iptables.transact(netns, family, "filter", verify)


def gc(network: str, valid_ids: set[str], netns: str | None = None) -> int:
    """Delete per-IP rules of `network` whose container id is not valid; returns how many."""
    prefix = f'name: "{network}" id: "'

    def sweep(s: iptables.Session) -> int:
        def stale(rule: object) -> bool:
            cmt = s.comment_of(rule) or ""
            return cmt.startswith(prefix) and cmt[len(prefix):].rstrip('"') not in valid_ids

        return s.delete_where(PRIV, stale) if s.has_chain(PRIV) else 0

    total = 0
    for family in (4, 6):
        try:
            total += iptables.transact(netns, family, "filter", sweep)
        except BackendUnavailable:
            continue
    return total
