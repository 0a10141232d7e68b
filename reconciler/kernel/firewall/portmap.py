"""Port forwarding rules (the portmap plugin's kernel side), in the reference's layouts.

iptables (nat table, one family per container address):
  PREROUTING/OUTPUT  -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
  CNI-HOSTPORT-DNAT  -p P -m comment --comment 'dnat name: "N" id: "C"' -m multiport --dports … -j CNI-DN-<hash>
  CNI-DN-<hash>      per mapping: hairpin and localhost marks, then DNAT
  CNI-HOSTPORT-SETMARK / CNI-HOSTPORT-MASQ (prepended into POSTROUTING) for snat
nftables: tables `ip|ip6 cni_hostport` with chains hostports, hostip_hostports,
hostports_all, prerouting, output, masquerading; our rules are commented with the
container id. Written as one text transaction, read back as JSON.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from reconciler.kernel.firewall import iptables, nftables, xtnft
from reconciler.kernel.firewall.base import (
    IPTABLES,
    NFTABLES,
    FeatureBackend,
    RuleDrift,
    hash_name,
)

Address = ipaddress.IPv4Interface | ipaddress.IPv6Interface
TOP_DNAT = "CNI-HOSTPORT-DNAT"
SETMARK = "CNI-HOSTPORT-SETMARK"
MASQ = "CNI-HOSTPORT-MASQ"
OLD_SNAT = "CNI-HOSTPORT-SNAT"
NFT_TABLE = "cni_hostport"
PROTOCOLS = ("tcp", "udp", "sctp")


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def applies_to(self, family: int) -> bool:
        return not self.host_ip or ipaddress.ip_address(self.host_ip).version == family

    @property
    def dest(self) -> str | None:
        """The host address to match, or None for "any" (unset, 0.0.0.0 or ::)."""
        if not self.host_ip or ipaddress.ip_address(self.host_ip).is_unspecified:
            return None
        return str(ipaddress.ip_address(self.host_ip))


@dataclass(frozen=True)
class Forward:
    """Everything one container address needs forwarded."""

    network: str
    container_id: str
    address: Address
    mappings: tuple[PortMapping, ...]
    snat: bool = True
    masq_all: bool = False
    mark_bit: int = 13
    external_setmark: str | None = None
    conditions: tuple[str, ...] = field(default_factory=tuple)

    @property
    def family(self) -> int:
        return self.address.version


def _route_iface(ip: ipaddress.IPv4Address) -> str | None:
    """The interface of the longest-prefix IPv4 route to `ip`, from /proc (no netlink import)."""
    best: tuple[int, int, str] | None = None
    with open("/proc/thread-self/net/route") as fh:
        next(fh, None)
        for line in fh:
            f = line.split()
            if len(f) < 8:
                continue
            dst = int.from_bytes(bytes.fromhex(f[1]), "little")
            mask = int.from_bytes(bytes.fromhex(f[7]), "little")
            metric = int(f[6])
            if int(ip) & mask == dst:
                key = (bin(mask).count("1"), -metric, f[0])
                if best is None or key[:2] > best[:2]:
                    best = key
    return best[2] if best else None


def enable_route_localnet(ip: ipaddress.IPv4Address, netns: str | None = None) -> str | None:
    """Set route_localnet=1 on the host interface routing to `ip` (so localhost:hostPort works).

    Never reverted, as the reference does. Returns the interface (None if no route)."""
    from reconciler.kernel.firewall.nsexec import run_in_netns

    def body() -> str | None:
        iface = _route_iface(ip)
        if iface:
            path = f"/proc/sys/net/ipv4/conf/{iface}/route_localnet"
            with open(path) as fh:
                if fh.read().strip() == "1":
                    return iface
            with open(path, "w") as fh:
                fh.write("1")
        return iface

    return run_in_netns(netns, body)


def dn_chain(network: str, container_id: str) -> str:
    return hash_name("CNI-DN-", network + container_id, 28)


def sn_chain(network: str, container_id: str) -> str:
    return hash_name("CNI-SN-", network + container_id, 28)


def dnat_comment(network: str, container_id: str) -> str:
    text = f'dnat name: "{network}" id: "{container_id}"'
    return text if len(text) <= 255 else text[:253] + "..."


def _mark(bit: int) -> str:
    value = 1 << bit
    return f"{value:#x}/{value:#x}"


def _ip_port(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    return f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}"


def top_entry() -> list[str]:
    return ["-m", "addrtype", "--dst-type", "LOCAL", "-j", TOP_DNAT]


def setmark_rule(bit: int) -> list[str]:
    return ["-m", "comment", "--comment", "CNI portfwd masquerade mark", "-j", "MARK", "--set-xmark", _mark(bit)]


def masq_rule(bit: int) -> list[str]:
    return ["-m", "mark", "--mark", _mark(bit), "-j", "MASQUERADE"]


MASQ_ENTRY = ["-m", "comment", "--comment", "CNI portfwd requiring masquerade", "-j", MASQ]


def entry_rules(fwd: Forward) -> list[list[str]]:
    """CNI-HOSTPORT-DNAT -> CNI-DN-…: one per protocol (sorted) and chunk of 15 host ports."""
    by_proto: dict[str, list[int]] = {}
    for m in fwd.mappings:
        by_proto.setdefault(m.protocol, []).append(m.host_port)
    out = []
    cmt = dnat_comment(fwd.network, fwd.container_id)
    for proto in sorted(by_proto):
        ports = by_proto[proto]
        for i in range(0, len(ports), 15):
            spec = ",".join(str(p) for p in ports[i : i + 15])
            out.append(["-p", proto, "-m", "comment", "--comment", cmt, "-m", "multiport", "--dports", spec,
                        *fwd.conditions, "-j", dn_chain(fwd.network, fwd.container_id)])
    return out


def hairpin_source(fwd: Forward) -> str:
    """Whose connections to a mapped port are masqueraded: everyone with `masqAll`, else the container's
    subnet, so that the container itself and its neighbours on the bridge, reaching the port through
    the host, are answered through the host too (both layouts)."""
    if fwd.masq_all:
        return "0.0.0.0/0" if fwd.family == 4 else "::/0"
    return str(fwd.address.network)


def dn_rules(fwd: Forward) -> list[list[str]]:
    """The per-container chain: for each mapping, hairpin/localhost marks then the DNAT."""
    setmark = fwd.external_setmark or SETMARK
    rules: list[list[str]] = []
    for m in fwd.mappings:
        if not m.applies_to(fwd.family):
            continue
        base = ["-p", m.protocol, "-m", m.protocol, "--dport", str(m.host_port)]
        if m.dest:
            base = ["-d", m.dest, *base]
        if fwd.snat:
            rules.append(["-s", hairpin_source(fwd), *base, "-j", setmark])
            if fwd.family == 4 and not fwd.masq_all:
                rules.append(["-s", "127.0.0.1/32", *base, "-j", setmark])
        rules.append([*base, "-j", "DNAT", "--to-destination", _ip_port(fwd.address.ip, m.container_port)])
    return rules


class IptablesPortmap(FeatureBackend):
    name = IPTABLES

    def setup(self, fwd: Forward, netns: str | None) -> None:
        chain = dn_chain(fwd.network, fwd.container_id)
        wanted_entries = entry_rules(fwd)
        wanted_rules = dn_rules(fwd)

        def apply(s: iptables.Session) -> None:
            if fwd.snat and not fwd.external_setmark:
                s.ensure_chain(SETMARK)
                s.append_unique(SETMARK, setmark_rule(fwd.mark_bit))
                s.ensure_chain(MASQ)
                s.append_unique(MASQ, masq_rule(fwd.mark_bit))
                s.insert_unique("POSTROUTING", MASQ_ENTRY, 0)
            s.ensure_chain(TOP_DNAT)
            for entry in ("PREROUTING", "OUTPUT"):
                s.append_unique(entry, top_entry())
            s.ensure_chain(chain)
            s.replace_rules(chain, wanted_rules)
            keep = [s.build(a) for a in wanted_entries]
            stale = [r for r in s.rules_to(TOP_DNAT, chain) if not any(s.same(r, k) for k in keep)]
            for rule in stale:
                s.remove(TOP_DNAT, rule)
            for args in reversed(wanted_entries):
                s.insert_unique(TOP_DNAT, args, 0)  # newest container wins a contested port

        iptables.transact(netns, fwd.family, "nat", apply)

    def teardown(self, network: str, container_id: str, netns: str | None) -> None:
        chain = dn_chain(network, container_id)
        old = sn_chain(network, container_id)

        def remove(s: iptables.Session) -> None:
            for top, own in ((TOP_DNAT, chain), (OLD_SNAT, old)):
                if s.has_chain(own):
                    if s.has_chain(top):
                        s.delete_jumps(top, own)
                    s.flush_delete_chain(own)

        iptables.in_each_family(netns, "nat", remove)
        xtnft.teardown_portmap(network, container_id, netns)  # the same layout in iptables-nft tables

    def check(self, fwd: Forward, netns: str | None) -> None:
        chain = dn_chain(fwd.network, fwd.container_id)

        def verify(s: iptables.Session) -> None:
            if not s.has_chain(chain):
                raise RuleDrift(f"portmap: chain {chain} missing from IPv{fwd.family} nat table")
            want: list[tuple[str, list[str]]] = [(chain, r) for r in dn_rules(fwd)]
            want += [(TOP_DNAT, r) for r in entry_rules(fwd)]
            want += [("PREROUTING", top_entry()), ("OUTPUT", top_entry())]
            if fwd.snat and not fwd.external_setmark:
                want += [(SETMARK, setmark_rule(fwd.mark_bit)), (MASQ, masq_rule(fwd.mark_bit)),
                         ("POSTROUTING", MASQ_ENTRY)]
            for where, args in want:
                if not s.has(where, args):
                    raise RuleDrift(f"portmap: rule missing in {where}: {iptables.render(args)}")

        iptables.transact(netns, fwd.family, "nat", verify)

    def gc(self, network: str, valid_ids: set[str], netns: str | None) -> None:
        prefix = f'dnat name: "{network}" id: "'

        def sweep(s: iptables.Session) -> None:
            dead: set[str] = set()
            for rule in s.rules(TOP_DNAT):
                cmt = s.comment_of(rule) or ""
                if cmt.startswith(prefix):
                    cid = cmt[len(prefix):].rstrip('"')
                    if cid not in valid_ids and s.target_of(rule) == dn_chain(network, cid):
                        dead.add(s.target_of(rule))
            for chain in dead:
                s.delete_jumps(TOP_DNAT, chain)
                s.flush_delete_chain(chain)

        iptables.in_each_family(netns, "nat", sweep)
        xtnft.gc_portmap(network, valid_ids, netns)

    def has_attachment(self, network: str, container_id: str, netns: str | None) -> bool:
        chain = dn_chain(network, container_id)
        return any(iptables.in_each_family(netns, "nat", lambda s: s.has_chain(chain)))


def _nft_family(family: int) -> str:
    return "ip" if family == 4 else "ip6"


def nft_rules(fwd: Forward) -> list[tuple[str, str]]:
    """(chain, rule text) of one container's nftables rules."""
    fam = _nft_family(fwd.family)
    cid = fwd.container_id
    ip = fwd.address.ip
    out = []
    for m in fwd.mappings:
        if not m.applies_to(fwd.family):
            continue
        dst = f"{fam} daddr {m.dest} " if m.dest else ""
        out.append(("hostports", f'{dst}{m.protocol} dport {m.host_port} dnat to {_ip_port(ip, m.container_port)}'
                                 f' comment "{cid}"'))
    if fwd.snat:
        out.append(("masquerading", f'{fam} saddr {hairpin_source(fwd)} {fam} daddr {ip} masquerade comment "{cid}"'))
        if fwd.family == 4 and not fwd.masq_all:
            out.append(("masquerading", f'ip saddr 127.0.0.1 ip daddr {ip} masquerade comment "{cid}"'))
    return out


def _nft_ours(view: nftables.TableView | None, container_id: str) -> list[dict]:
    if view is None:
        return []
    return [r for chain in ("hostports", "hostip_hostports", "masquerading")
            for r in view.chain_rules(chain) if r.get("comment") == container_id]


class NftablesPortmap(FeatureBackend):
    name = NFTABLES

    def setup(self, fwd: Forward, netns: str | None) -> None:
        fam = _nft_family(fwd.family)
        t = f"{fam} {NFT_TABLE}"
        conds = " ".join(fwd.conditions)

        def apply(nft: nftables.Nft) -> None:
            stale = _nft_ours(nft.table(fam, NFT_TABLE, fresh=True), fwd.container_id)
            lines = [f'add table {t} {{ comment "CNI portmap plugin" ; }}',
                     f"add chain {t} hostports", f"add chain {t} hostip_hostports",
                     f"add chain {t} hostports_all", f"flush chain {t} hostports_all",
                     f"add rule {t} hostports_all jump hostip_hostports",
                     f"add rule {t} hostports_all jump hostports"]
            for chain in ("prerouting", "output"):
                lines += [f"add chain {t} {chain} {{ type nat hook {chain} priority -100 ; }}",
                          f"flush chain {t} {chain}",
                          f"add rule {t} {chain} {conds} fib daddr type local jump hostports_all"]
            if fwd.snat:
                lines.append(f"add chain {t} masquerading {{ type nat hook postrouting priority 100 ; }}")
            lines += [f"delete rule {t} {r['chain']} handle {r['handle']}" for r in stale]
            lines += [f"add rule {t} {chain} {text}" for chain, text in nft_rules(fwd)]
            nft.run_text("\n".join(lines))

        nftables.transact(netns, apply)

    def teardown(self, network: str, container_id: str, netns: str | None) -> None:
        def remove(nft: nftables.Nft) -> None:
            for fam in ("ip", "ip6"):
                nft.run([nftables.rule_delete(r) for r in _nft_ours(nft.table(fam, NFT_TABLE, fresh=True), container_id)])

        nftables.settle()  # a rollback inside a batch: what the ADD queued must be there to be removed
        nftables.transact(netns, remove)

    def check(self, fwd: Forward, netns: str | None) -> None:
        fam = _nft_family(fwd.family)

        def verify(nft: nftables.Nft) -> None:
            view = nft.table(fam, NFT_TABLE)
            if view is None:
                raise RuleDrift(f"portmap: nftables table {fam} {NFT_TABLE} missing")
            for chain in ("prerouting", "output", "hostports_all"):
                if not view.chain_rules(chain):
                    raise RuleDrift(f"portmap: nftables chain {fam} {NFT_TABLE} {chain} missing or empty")
            ours = _nft_ours(view, fwd.container_id)
            for m in fwd.mappings:
                if m.applies_to(fwd.family) and not any(_is_dnat(r, m, fwd) for r in ours):
                    raise RuleDrift(f"portmap: nftables DNAT {m.protocol}/{m.host_port} -> "
                                    f"{_ip_port(fwd.address.ip, m.container_port)} missing")
            masq = sum(1 for chain, _ in nft_rules(fwd) if chain == "masquerading")
            have = sum(1 for r in ours if r["chain"] == "masquerading")
            if have < masq:
                raise RuleDrift(f"portmap: nftables masquerading rules for {fwd.container_id}: {have} < {masq}")

        nftables.transact(netns, verify)

    def gc(self, network: str, valid_ids: set[str], netns: str | None) -> None:
        """nftables rules carry only the container id (as the reference's do), not the network: they
        cannot be told apart from other networks' rules, so GC leaves them (DEL removes them)."""

    def has_attachment(self, network: str, container_id: str, netns: str | None) -> bool:
        return nftables.transact(netns, lambda nft: any(
            _nft_ours(nft.table(f, NFT_TABLE), container_id) for f in ("ip", "ip6")))


def _is_dnat(rule: dict, m: PortMapping, fwd: Forward) -> bool:
    """Does this listed nft rule forward mapping `m` (protocol, port, host address, target)?"""
    if rule.get("chain") != "hostports":
        return False
    port_ok = dnat_ok = False
    daddr = None
    for expr in rule.get("expr", []):
        match = expr.get("match") or {}
        payload = match.get("left", {}).get("payload", {})
        if payload.get("field") == "dport":
            port_ok = payload.get("protocol") == m.protocol and match.get("right") == m.host_port
        elif payload.get("field") == "daddr":
            daddr = match.get("right")
        dnat = expr.get("dnat")
        if dnat:
            dnat_ok = dnat.get("addr") == str(fwd.address.ip) and dnat.get("port") == m.container_port
    return port_ok and dnat_ok and daddr == m.dest


IMPLS: dict[str, IptablesPortmap | NftablesPortmap] = {IPTABLES: IptablesPortmap(), NFTABLES: NftablesPortmap()}
