"""The firewall plugin's rules (filter table), in the reference's layout, in the host's iptables.

The reference execs `iptables`, so its rules land wherever that command writes: on a host whose
`iptables` is the nft variant (Debian's default), the iptables-nft tables, written here through
iptables-nft's own tools (`iptnft`); on a legacy host, the x_tables tables, through python-iptables.
A verdict in one does not reach the other (an ACCEPT in legacy FORWARD passes nothing through an
nft `FORWARD DROP` policy, and the operator's `iptables -A CNI-ADMIN` lands in the nft one), so
`xtables()` follows the host's command; `RECONCILER_IPTABLES=legacy|nft` overrides it. DEL and GC
clean both.

  FORWARD      (first) -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD
  CNI-FORWARD  (first) -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN
  CNI-FORWARD  per container IP:
               -d IP/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
               -s IP/32 -j ACCEPT
CNI-ADMIN belongs to the operator: it is created empty if missing and never flushed or
deleted. Our per-IP rules also carry ``name: "<net>" id: "<id>"`` (the reference's have no
comment), so GC can find them; DEL removes both forms, so state made by the reference
plugin is cleaned up too. Chains are never deleted.

ingressPolicy same-bridge / isolated (per bridge, never torn down: other containers may
still use the bridge), as the reference:
  FORWARD (first)        -j CNI-ISOLATION-STAGE-1
  CNI-ISOLATION-STAGE-1  -i BR ! -o BR -j CNI-ISOLATION-STAGE-2 ; [isolated: -i BR -o BR -j DROP] ; -j RETURN
  CNI-ISOLATION-STAGE-2  -o BR -j DROP ; -j RETURN
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from reconciler.kernel.firewall import iptables, iptnft, xtnft
from reconciler.kernel.firewall.base import NFTABLES, BackendUnavailable, RuleDrift, alternative

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
PRIV = "CNI-FORWARD"
ADMIN = "CNI-ADMIN"
STAGE1 = "CNI-ISOLATION-STAGE-1"
STAGE2 = "CNI-ISOLATION-STAGE-2"
POLICIES = ("same-bridge", "isolated")
LEGACY, NFT = "legacy", "nft"
T = TypeVar("T")
XtSession = iptables.Session | iptnft.Session


def xtables() -> str:
    """Which iptables the rules go to: RECONCILER_IPTABLES (legacy or nft), else the one the host's
    `iptables` command drives (legacy when it cannot be told or iptables-nft's tools are missing)."""
    forced = os.environ.get("RECONCILER_IPTABLES", "").strip().lower()
    if forced in (LEGACY, NFT):
        return forced
    return NFT if alternative() == NFTABLES and iptnft.available() else LEGACY


def _transact(netns: str | None, family: int, fn: Callable[[XtSession], T]) -> T:
    """`fn` on the filter table of `family` in the iptables `xtables()` picks."""
    xt = iptnft if xtables() == NFT else iptables
    return xt.transact(netns, family, "filter", fn)


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

        def apply(s: XtSession, ips: list[IP] = ips) -> None:
            s.ensure_chain(PRIV)
            s.ensure_chain(admin)
            if not s.has("FORWARD", priv_rule()):
                s.insert_unique("FORWARD", priv_rule(), 0)
            if not s.has(PRIV, admin_rule(admin)):
                s.insert_unique(PRIV, admin_rule(admin), 0)
            for ip in ips:
                for args in ip_rules(ip, cmt):
                    s.append_unique(PRIV, args)

        _transact(netns, family, apply)


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
            iptables.transact(netns, family, "filter", remove, existing_only=True)
        except BackendUnavailable:
            continue
    xtnft.teardown_filter(addresses, netns)  # ours and the reference's per-IP rules in iptables-nft tables


def check(network: str, container_id: str, addresses: Sequence[IP], admin: str = ADMIN,
          netns: str | None = None) -> None:
    cmt = comment(network, container_id)
    for family, ips in sorted(_by_family(addresses).items()):

        def verify(s: XtSession, ips: list[IP] = ips) -> None:
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

        _transact(netns, family, verify)


def gc(network: str, valid_ids: set[str], netns: str | None = None) -> int:
    """Delete per-IP rules of `network` whose container id is not valid; returns how many."""
    prefix = f'name: "{network}" id: "'

    def sweep(s: XtSession) -> int:
        def stale(rule: object) -> bool:
            cmt = s.comment_of(rule) or ""  # type: ignore[arg-type]
            return cmt.startswith(prefix) and cmt[len(prefix):].rstrip('"') not in valid_ids

        return s.delete_where(PRIV, stale) if s.has_chain(PRIV) else 0

    return sum(iptables.in_each_family(netns, "filter", sweep) + iptnft.in_each_family(netns, "filter", sweep))


def isolation_rules(bridge: str, policy: str) -> dict[str, list[list[str]]]:
    """chain -> rules (in order) of one bridge's ingress policy."""
    cmt = ["-m", "comment", "--comment", f"CNI firewall plugin rules (ingressPolicy: {policy})"]
    stage1 = [["-i", bridge, "!", "-o", bridge, *cmt, "-j", STAGE2]]
    if policy == "isolated":
        stage1.append(["-i", bridge, "-o", bridge, *cmt, "-j", "DROP"])
    return {"FORWARD": [[*cmt, "-j", STAGE1]],
            STAGE1: stage1 + [[*cmt, "-j", "RETURN"]],
            STAGE2: [["-o", bridge, *cmt, "-j", "DROP"], [*cmt, "-j", "RETURN"]]}


def setup_isolation(bridge: str, families: set[int], policy: str, netns: str | None = None) -> None:
    """Drop traffic between this bridge and other isolated bridges (isolated: within it too)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown ingress policy {policy!r}")
    rules = isolation_rules(bridge, policy)

    def apply(s: XtSession) -> None:
        s.ensure_chain(STAGE1)
        s.ensure_chain(STAGE2)
        for chain, chain_rules in rules.items():
            *specific, last = chain_rules
            if chain == "FORWARD":
                s.insert_unique(chain, last, 0)  # before the CNI-FORWARD jump
                continue
            for args in reversed(specific):
                s.insert_unique(chain, args, 0)  # before the RETURN
            s.append_unique(chain, last)

    for family in sorted(families):
        _transact(netns, family, apply)


def check_isolation(bridge: str, families: set[int], policy: str, netns: str | None = None) -> None:
    rules = isolation_rules(bridge, policy)

    def verify(s: XtSession) -> None:
        for chain, chain_rules in rules.items():
            for args in chain_rules:
                if not s.has(chain, args):
                    raise RuleDrift(f"firewall: rule missing in {chain}: {iptables.render(args)}")

    for family in sorted(families):
        _transact(netns, family, verify)
