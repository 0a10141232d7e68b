"""ipMasq for bridge/ptp: the reference's layouts in iptables and nftables.

iptables (nat table, per family): chain ``CNI-<sha512(net+id)[:24]>`` with
``-d <subnet> -j ACCEPT`` and ``! -d <multicast> -j MASQUERADE``, entered from
POSTROUTING by ``-s <ip> -j CNI-…``; every rule carries the comment
``name: "<net>" id: "<id>"``.
nftables: table ``inet cni_plugins_masquerade``, chain ``postrouting`` (nat
hook, rewritten on each ADD) jumping to ``masq_checks`` holding one rule per
address, commented ``<h16(net)>-<h16(if:id)>, net: …, if: …, id: …``.

`netns` everywhere means "act inside that namespace" (None: our own).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence

from reconciler.kernel.firewall import iptables, nftables, xtnft
from reconciler.kernel.firewall.base import (
    BACKENDS,
    IPTABLES,
    NFTABLES,
    BackendUnavailable,
    FeatureBackend,
    RuleDrift,
    hash_name,
)
from reconciler.kernel.firewall.select import choose

log = logging.getLogger(__name__)
Address = ipaddress.IPv4Interface | ipaddress.IPv6Interface
MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}
NFT_TABLE = "cni_plugins_masquerade"
NFT_CHAIN = "masq_checks"
NFT_COMMENT_MAX = 128


def chain_name(network: str, container_id: str) -> str:
    return hash_name("CNI-", network + container_id, 28)


def ipt_comment(network: str, container_id: str) -> str:
    return f'name: "{network}" id: "{container_id}"'


def rule_source(rule: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A python-iptables rule's `-s` as a network (it reports "addr/netmask")."""
    raw = str(getattr(rule, "src", "") or "")
    if not raw or raw.startswith("!"):
        return None
    addr, _, mask = raw.partition("/")
    try:
        if ":" in mask:
            bits = sum(bin(int(part or "0", 16)).count("1") for part in mask.split(":"))
            return ipaddress.ip_network(f"{addr}/{bits}", strict=False)
        return ipaddress.ip_network(raw, strict=False)
    except ValueError:
        return None


def _families(addresses: Sequence[Address]) -> list[int]:
    return sorted({a.version for a in addresses}) or [4, 6]


class IptablesMasq(FeatureBackend):
    name = IPTABLES

    @staticmethod
    def rules(network: str, container_id: str, addresses: Sequence[Address], family: int) -> tuple[list, list]:
        chain = chain_name(network, container_id)
        cmt = ["-m", "comment", "--comment", ipt_comment(network, container_id)]
        own: list[list[str]] = []
        post: list[list[str]] = []
        for addr in addresses:
            if addr.version != family:
                continue
            own.append(["-d", str(addr.network), *cmt, "-j", "ACCEPT"])
            own.append(["!", "-d", MULTICAST[family], *cmt, "-j", "MASQUERADE"])
            post.append(["-s", str(addr.ip), *cmt, "-j", chain])
        return own, post

    def setup(self, network: str, container_id: str, ifname: str, addresses: Sequence[Address],
              netns: str | None) -> None:
        chain = chain_name(network, container_id)
        for family in sorted({a.version for a in addresses}):
            own, post = self.rules(network, container_id, addresses, family)

            def apply(s: iptables.Session, own: list = own, post: list = post) -> None:
                s.ensure_chain(chain)
                for args in own:
                    s.append_unique(chain, args)
                for args in post:
                    s.append_unique("POSTROUTING", args)

            try:
                iptables.transact(netns, family, "nat", apply)
            except Exception:
                self.teardown(network, container_id, ifname, addresses, netns)  # no half-done attachment
                raise

    def teardown(self, network: str, container_id: str, ifname: str, addresses: Sequence[Address],
                 netns: str | None) -> None:
        chain = chain_name(network, container_id)
        wanted = [a.ip for a in addresses]

        def ours(s: iptables.Session, rule: object) -> bool:
            if s.target_of(rule) != chain:
                return False
            src = rule_source(rule)
            return not wanted or src is None or any(ip in src for ip in wanted if ip.version == src.version)

        def remove(s: iptables.Session) -> None:
            if not s.has_chain(chain):
                return
            s.delete_where("POSTROUTING", lambda r: ours(s, r))
            if not any(s.target_of(r) == chain for r in s.rules("POSTROUTING")):
                s.flush_delete_chain(chain)

        for family in _families(addresses):
            try:
                iptables.transact(netns, family, "nat", remove, existing_only=True)
            except BackendUnavailable:
                continue
        xtnft.teardown_masquerade(network, container_id, netns)  # the same layout in iptables-nft tables

    def check(self, network: str, container_id: str, ifname: str, addresses: Sequence[Address],
              netns: str | None) -> None:
        chain = chain_name(network, container_id)
        for family in sorted({a.version for a in addresses}):
            own, post = self.rules(network, container_id, addresses, family)

            def verify(s: iptables.Session, own: list = own, post: list = post) -> None:
                if not s.has_chain(chain):
                    raise RuleDrift(f"ipMasq: chain {chain} missing from IPv{s.family} nat table")
                for args in own:
                    if not s.has(chain, args):
                        raise RuleDrift(f"ipMasq: rule missing in {chain}: {iptables.render(args)}")
                for args in post:
                    if not s.has("POSTROUTING", args):
                        raise RuleDrift(f"ipMasq: rule missing in POSTROUTING: {iptables.render(args)}")

            iptables.transact(netns, family, "nat", verify)

    def gc(self, network: str, valid: set[tuple[str, str]], netns: str | None) -> None:
        prefix = f'name: "{network}" id: "'
        keep = {cid for cid, _ in valid}

        def sweep(s: iptables.Session) -> None:
            dead: set[str] = set()

            def stale(rule: object) -> bool:
                cmt = s.comment_of(rule) or ""
                target = s.target_of(rule)
                if not (cmt.startswith(prefix) and target.startswith("CNI-")):
                    return False
                cid = cmt[len(prefix):].rstrip('"')
                if cid in keep or target != chain_name(network, cid):
                    return False
                dead.add(target)
                return True

            s.delete_where("POSTROUTING", stale)
            for chain in dead:
                s.flush_delete_chain(chain)

        iptables.in_each_family(netns, "nat", sweep)
        xtnft.gc_masquerade(network, keep, netns)

    def has_attachment(self, network: str, container_id: str, netns: str | None, ifname: str = "") -> bool:
        chain = chain_name(network, container_id)
        return any(iptables.in_each_family(netns, "nat", lambda s: s.has_chain(chain)))


def instance_hash(network: str, container_id: str, ifname: str) -> str:
    return hash_name("", network, 16) + "-" + hash_name("", f"{ifname}:{container_id}", 16)


def nft_comment(network: str, container_id: str, ifname: str) -> str:
    text = "{}, net: {}, if: {}, id: {}".format(
        instance_hash(network, container_id, ifname),
        network.replace('"', ""), ifname.replace('"', ""), container_id.replace('"', ""))
    return text[:NFT_COMMENT_MAX]


def _payload(family: int, field: str) -> dict:
    return {"payload": {"protocol": "ip" if family == 4 else "ip6", "field": field}}


def _prefix(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> dict:
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def nft_rule_expr(addr: Address) -> list[dict]:
    return [
        {"match": {"op": "==", "left": _payload(addr.version, "saddr"), "right": str(addr.ip)}},
        {"match": {"op": "!=", "left": _payload(addr.version, "daddr"), "right": _prefix(addr.network)}},
        {"masquerade": None},
    ]


class NftablesMasq(FeatureBackend):
    name = NFTABLES

    @staticmethod
    def _base() -> list[dict]:
        t = {"family": "inet", "table": NFT_TABLE}
        mc4 = ipaddress.ip_network(MULTICAST[4])
        mc6 = ipaddress.ip_network(MULTICAST[6])
        return [
            {"add": {"table": {"family": "inet", "name": NFT_TABLE,
                               "comment": "Masquerading for plugins from github.com/containernetworking/plugins"}}},
            {"add": {"chain": {**t, "name": NFT_CHAIN, "comment":
                               "Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet"}}},
            {"add": {"chain": {**t, "name": "postrouting", "type": "nat", "hook": "postrouting",
                               "prio": 100, "policy": "accept"}}},
            {"flush": {"chain": {**t, "name": "postrouting"}}},
            {"add": {"rule": {**t, "chain": "postrouting", "expr": [
                {"match": {"op": "==", "left": _payload(4, "daddr"), "right": _prefix(mc4)}}, {"return": None}]}}},
            {"add": {"rule": {**t, "chain": "postrouting", "expr": [
                {"match": {"op": "==", "left": _payload(6, "daddr"), "right": _prefix(mc6)}}, {"return": None}]}}},
            {"add": {"rule": {**t, "chain": "postrouting", "expr": [{"goto": {"target": NFT_CHAIN}}]}}},
        ]

    @staticmethod
    def _matching(view: nftables.TableView | None, prefix: str) -> list[dict]:
        if view is None:
            return []
        return [r for r in view.chain_rules(NFT_CHAIN) if str(r.get("comment", "")).startswith(prefix)]

    def setup(self, network: str, container_id: str, ifname: str, addresses: Sequence[Address],
              netns: str | None) -> None:
        cmt = nft_comment(network, container_id, ifname)

        def apply(nft: nftables.Nft) -> None:
            stale = self._matching(nft.table("inet", NFT_TABLE, fresh=True), instance_hash(network, container_id, ifname))
            cmds = self._base() + [nftables.rule_delete(r) for r in stale]
            for addr in addresses:
                cmds.append({"add": {"rule": {"family": "inet", "table": NFT_TABLE, "chain": NFT_CHAIN,
                                              "comment": cmt, "expr": nft_rule_expr(addr)}}})
            nft.run(cmds)

        nftables.transact(netns, apply)

    def teardown(self, network: str, container_id: str, ifname: str, addresses: Sequence[Address],
                 netns: str | None) -> None:
        def remove(nft: nftables.Nft) -> None:
            rules = self._matching(nft.table("inet", NFT_TABLE, fresh=True), instance_hash(network, container_id, ifname))
            nft.run([nftables.rule_delete(r) for r in rules])

        nftables.settle()  # a rollback inside a batch: what the ADD queued must be there to be removed
        nftables.transact(netns, remove)

    def check(self, network: str, container_id: str, ifname: str, addresses: Sequence[Address],
              netns: str | None) -> None:
        cmt = nft_comment(network, container_id, ifname)

        def verify(nft: nftables.Nft) -> None:
            view = nft.table("inet", NFT_TABLE)
            if view is None or "postrouting" not in view.chains:
                raise RuleDrift(f"ipMasq: nftables table inet {NFT_TABLE} or its postrouting chain missing")
            have = [r.get("expr") for r in self._matching(view, instance_hash(network, container_id, ifname))
                    if r.get("comment") == cmt]
            for addr in addresses:
                if nft_rule_expr(addr) not in have:
                    raise RuleDrift(f"ipMasq: nftables rule for {addr.ip} ({cmt}) missing in {NFT_CHAIN}")

        nftables.transact(netns, verify)

    def gc(self, network: str, valid: set[tuple[str, str]], netns: str | None) -> None:
        keep = {nft_comment(network, cid, ifname) for cid, ifname in valid}

        def sweep(nft: nftables.Nft) -> None:
            rules = self._matching(nft.table("inet", NFT_TABLE, fresh=True), hash_name("", network, 16) + "-")
            nft.run([nftables.rule_delete(r) for r in rules if r.get("comment") not in keep])

        nftables.transact(netns, sweep)

    def has_attachment(self, network: str, container_id: str, netns: str | None, ifname: str = "") -> bool:
        prefix = instance_hash(network, container_id, ifname)
        return nftables.transact(netns, lambda nft: bool(self._matching(nft.table("inet", NFT_TABLE), prefix)))


IMPLS: dict[str, IptablesMasq | NftablesMasq] = {IPTABLES: IptablesMasq(), NFTABLES: NftablesMasq()}


def _addrs(addresses: Iterable[Address]) -> list[Address]:
    return [ipaddress.ip_interface(a) if isinstance(a, str) else a for a in addresses]


def setup(network: str, container_id: str, ifname: str, addresses: list[Address],
          backend: str | None, netns: str | None = None) -> str:
    """Masquerade traffic leaving `addresses`' subnets; returns the backend used."""
    addrs = _addrs(addresses)
    if not addrs:
        return backend or ""
    chosen = choose(backend, netns, lambda b: IMPLS[b].has_attachment(network, container_id, netns, ifname),
                    what=f"ipMasq {network}/{container_id}")
    IMPLS[chosen].setup(network, container_id, ifname, addrs, netns)
    log.debug("ipMasq %s/%s/%s set up with %s", network, container_id, ifname, chosen)
    return chosen


def teardown(network: str, container_id: str, ifname: str, addresses: list[Address],
             backend: str | None = None, netns: str | None = None) -> None:
    """Remove this attachment's masquerade rules from both backends; missing rules are fine."""
    addrs = _addrs(addresses)
    for name in BACKENDS:
        try:
            IMPLS[name].teardown(network, container_id, ifname, addrs, netns)
        except BackendUnavailable:
            continue


def check(network: str, container_id: str, ifname: str, addresses: list[Address],
          backend: str | None = None, netns: str | None = None) -> None:
    """Raise RuleDrift (a LookupError) naming the first missing rule."""
    addrs = _addrs(addresses)
    if not addrs:
        return
    chosen = backend
    if chosen is None:
        for name in BACKENDS:
            try:
                if IMPLS[name].has_attachment(network, container_id, netns, ifname):
                    chosen = name
                    break
            except BackendUnavailable:
                continue
    if chosen is None:
        raise RuleDrift(f"ipMasq: no masquerade rules for {network}/{container_id}/{ifname} in any backend")
    IMPLS[chosen].check(network, container_id, ifname, addrs, netns)


def gc(network: str, valid: set[tuple[str, str]], netns: str | None = None) -> None:
    """Remove masquerade rules of `network` whose (container_id, ifname) is not in `valid`."""
    for name in BACKENDS:
        try:
            IMPLS[name].gc(network, valid, netns)
        except BackendUnavailable:
            continue
