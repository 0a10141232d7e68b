"""Bridge MAC anti-spoofing (bridge's `macspoofchk`) in the reference's nftables layout.

Table ``bridge nat``; base chain ``PREROUTING`` (filter, prerouting, priority
-300) jumps from ``iifname <host veth>`` to ``cni-br-iface-<ref>``, which jumps to
``cni-br-iface-<ref>-mac``: ``ether saddr <mac> return`` then ``drop``. Every rule
carries the comment ``macspoofchk-<ref>`` where ref = ``<containerID>-<ifname>``.
Uses the firewall package's libnftables binding; `netns` is where to act.
"""

from __future__ import annotations

from typing import Any

FAMILY = "bridge"
TABLE = "nat"
BASE = "PREROUTING"


def ref_id(container_id: str, ifname: str) -> str:
    return f"{container_id}-{ifname}"


def _names(ref: str) -> tuple[str, str, str]:
    iface = f"cni-br-iface-{ref}"
    return iface, iface + "-mac", f"macspoofchk-{ref}"


def _rule(chain: str, expr: list[dict[str, Any]], comment: str) -> dict[str, Any]:
    return {"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": chain, "expr": expr, "comment": comment}}}


def _chain(name: str, **extra: Any) -> dict[str, Any]:
    return {"chain": {"family": FAMILY, "table": TABLE, "name": name, **extra}}


def _stale(view: Any, comment: str) -> list[dict[str, Any]]:
    from reconciler.kernel.firewall.nftables import rule_delete

    if view is None:
        return []
    return [rule_delete(r) for r in view.chain_rules(BASE) if r.get("comment") == comment]


def setup(host_iface: str, mac: str, ref: str, netns: str | None = None) -> None:
    """Drop frames from `host_iface` whose source MAC is not `mac` (replacing this ref's old rules)."""
    from reconciler.kernel.firewall import nftables

    iface_chain, mac_chain, comment = _names(ref)

    def body(nft: Any) -> None:
        view = nft.table(FAMILY, TABLE)
        cmds: list[dict[str, Any]] = [
            {"add": {"table": {"family": FAMILY, "name": TABLE}}},
            {"add": _chain(BASE, type="filter", hook="prerouting", prio=-300, policy="accept")},
            {"add": _chain(iface_chain)}, {"flush": _chain(iface_chain)},
            {"add": _chain(mac_chain)}, {"flush": _chain(mac_chain)},
            *_stale(view, comment),
            _rule(BASE, [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": host_iface}},
                         {"jump": {"target": iface_chain}}], comment),
            _rule(iface_chain, [{"jump": {"target": mac_chain}}], comment),
            _rule(mac_chain, [{"match": {"op": "==", "left": {"payload": {"protocol": "ether", "field": "saddr"}},
                                         "right": mac.lower()}}, {"return": None}], comment),
            _rule(mac_chain, [{"drop": None}], comment),
        ]
        nft.run(cmds)

    nftables.transact(netns, body)


def teardown(ref: str, netns: str | None = None) -> None:
    """Remove this ref's jump rule and chains; missing pieces are fine."""
    from reconciler.kernel.firewall import nftables
    from reconciler.kernel.firewall.base import BackendUnavailable

    iface_chain, mac_chain, comment = _names(ref)

    def body(nft: Any) -> None:
        view = nft.table(FAMILY, TABLE)
        if view is None:
            return
        cmds = _stale(view, comment)
        for name in (iface_chain, mac_chain):
            if name in view.chains:
                cmds.append({"flush": _chain(name)})
        for name in (iface_chain, mac_chain):
            if name in view.chains:
                cmds.append({"delete": _chain(name)})
        nft.run(cmds)

    try:
        nftables.settle()  # a rollback inside a batch: what the ADD queued must be there to be removed
        nftables.transact(netns, body)
    except BackendUnavailable:
        return


def check(host_iface: str, mac: str, ref: str, netns: str | None = None) -> str | None:
    """None when the rules are in place, else what is missing."""
    from reconciler.kernel.firewall import nftables

    iface_chain, mac_chain, comment = _names(ref)

    def body(nft: Any) -> str | None:
        view = nft.table(FAMILY, TABLE)
        if view is None:
            return f"nftables table {FAMILY} {TABLE} missing"
        jumps = [r for r in view.chain_rules(BASE) if r.get("comment") == comment]
        if not any(host_iface in str(r.get("expr")) and iface_chain in str(r.get("expr")) for r in jumps):
            return f"macspoofchk jump for {host_iface} missing from {BASE}"
        rules = view.chain_rules(mac_chain)
        if not any(mac.lower() in str(r.get("expr")) for r in rules):
            return f"macspoofchk rule for {mac} missing from {mac_chain}"
        if not any("drop" in str(r.get("expr")) for r in rules):
            return f"macspoofchk drop rule missing from {mac_chain}"
        return None

    return nftables.transact(netns, body)


def attachments(netns: str | None = None) -> dict[str, str]:
    """{ref: host interface} of every macspoofchk jump rule present."""
    from reconciler.kernel.firewall import nftables
    from reconciler.kernel.firewall.base import BackendUnavailable

    def body(nft: Any) -> dict[str, str]:
        view = nft.table(FAMILY, TABLE)
        out: dict[str, str] = {}
        for rule in view.chain_rules(BASE) if view is not None else []:
            comment = str(rule.get("comment") or "")
            if not comment.startswith("macspoofchk-"):
                continue
            for expr in rule.get("expr", []):
                match = expr.get("match") if isinstance(expr, dict) else None
                if match and match.get("left") == {"meta": {"key": "iifname"}}:
                    out[comment.removeprefix("macspoofchk-")] = str(match.get("right"))
        return out

    try:
        return nftables.transact(netns, body)
    except BackendUnavailable:
        return {}
