"""`reconciler graph`: a Graphviz picture of what the host has, and which spec file owns what.

Drawn: the host and each namespace as a cluster; interfaces with their kind and
addresses; bridges and their ports; veth pairs across namespaces; port
mappings (from the result cache's capability args); spec files with an edge to
every interface an attachment of theirs owns. Drift is red: a drifted
attachment's edge carries what drifted, an interface, namespace or bridge that
should exist but does not is drawn as a red dashed placeholder, and spec files
that failed to load are red.

By default only what the reconciler owns or is asked for is drawn (our
namespaces, the bridges of our networks and their ports, the host ends of our
veth pairs); `everything=True` draws every namespace and link of the host.
DOT is produced without Graphviz; svg/png are rendered by the `dot` tool.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reconciler.cni import cache
from reconciler.engine.observe import bridge_of

if TYPE_CHECKING:
    from reconciler.engine.apply import Engine
    from reconciler.kernel.snapshot import Snapshot

log = logging.getLogger(__name__)

HOST = "host"
RED = "#d62728"
FORMATS = ("dot", "svg", "png")


def q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@dataclass
class Node:
    id: str
    label: str
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class Edge:
    src: str
    dst: str
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class Picture:
    """Clusters of nodes (one per namespace, one for the specs) and edges between any nodes."""

    clusters: dict[str, tuple[str, dict[str, str], list[Node]]] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)

    def cluster(self, key: str, label: str, **attrs: str) -> list[Node]:
        if key not in self.clusters:
            self.clusters[key] = (label, attrs, [])
        return self.clusters[key][2]

    def has(self, node_id: str) -> bool:
        return any(n.id == node_id for _, _, nodes in self.clusters.values() for n in nodes)

    def add(self, cluster: str, node: Node) -> None:
        nodes = self.cluster(cluster, cluster)
        if not any(n.id == node.id for n in nodes):
            nodes.append(node)

    def to_dot(self) -> str:
        out = [
            "digraph reconciler {",
            '  graph [rankdir=LR, compound=true, fontname="Helvetica", fontsize=11];',
            '  node [shape=box, style="rounded", fontname="Helvetica", fontsize=10];',
            '  edge [fontname="Helvetica", fontsize=9];',
        ]
        for i, (key, (label, attrs, nodes)) in enumerate(self.clusters.items()):
            out.append(f"  subgraph {q(f'cluster_{i}_{key}')} {{")
            out.append(f"    label={q(label)};")
            out += [f"    {k}={q(v)};" for k, v in attrs.items()]
            for node in nodes:
                extra = "".join(f", {k}={q(v)}" for k, v in node.attrs.items())
                out.append(f"    {q(node.id)} [label={q(node.label)}{extra}];")
            out.append("  }")
        for edge in self.edges:
            attrs = ", ".join(f"{k}={q(v)}" for k, v in edge.attrs.items())
            out.append(f"  {q(edge.src)} -> {q(edge.dst)}" + (f" [{attrs}];" if attrs else ";"))
        out.append("}")
        return "\n".join(out) + "\n"


def _nid(ns: str, ifname: str) -> str:
    return f"{ns}/{ifname}"


def _addresses(snap: Snapshot, name: str) -> list[str]:
    return [str(a.address) for a in snap.addrs_of(name) if not a.address.ip.is_link_local and a.scope != 254]


def _link_node(ns: str, snap: Snapshot, name: str, drifted: bool = False) -> Node:
    link = snap.link(name)
    kind = (link.kind if link else "") or "device"
    lines = [name, f"({kind}{'' if link is None or link.up else ', DOWN'})", *_addresses(snap, name)]
    attrs: dict[str, str] = {}
    if kind == "bridge":
        attrs.update(shape="box3d", style="filled", fillcolor="#e8f0fe")
    if drifted or (link is not None and not link.up):
        attrs.update(color=RED, fontcolor=RED)
    return Node(_nid(ns, name), "\n".join(lines), attrs)


def _missing(ns: str, what: str, name: str) -> Node:
    return Node(_nid(ns, name), f"{name}\n({what} MISSING)", {"color": RED, "fontcolor": RED, "style": "dashed"})


def _snap(path: str | None) -> Snapshot | None:
    """Links and addresses of one namespace (read once per drawing: see `Drawing.draw`)."""
    from reconciler.kernel import namespaces
    from reconciler.kernel.snapshot import snapshot

    try:
        if path is not None and not namespaces.exists(path):
            return None
        return snapshot(path)
    except OSError as err:
        log.debug("cannot read %s: %s", path or "host", err)
        return None


class Drawing:
    """Collects the host's state for one engine and turns it into a Picture."""

    def __init__(self, engine: Engine, everything: bool = False, deep: bool = True) -> None:
        self.engine = engine
        self.everything = everything
        self.deep = deep
        self.pic = Picture()
        self.snaps: dict[str, Snapshot | None] = {}

    def snapshot_of(self, ns: str) -> Snapshot | None:
        if ns not in self.snaps:
            self.snaps[ns] = _snap(None if ns == HOST else (ns if ns.startswith("/") else f"/run/netns/{ns}"))
        return self.snaps[ns]

    def draw(self) -> Picture:
        from reconciler.kernel import namespaces

        # one netlink handle and one read per namespace, shared with observe's CHECKs
        with namespaces.session(), namespaces.shared():
            return self._draw()

    def _draw(self) -> Picture:
        from reconciler.kernel import namespaces

        engine = self.engine
        specs = engine.load()
        records = engine.inventory.records()
        drift = engine.observe(records, deep=self.deep).drift if records else {}
        wanted: set[str] = {r.netns for r in records.values()} | {a.netns for a in specs.attachments.values()}
        wanted |= engine.inventory.namespaces()
        if self.everything:
            wanted |= set(namespaces.list_names())
        host = self.snapshot_of(HOST)
        self.pic.cluster(HOST, "host", style="filled", fillcolor="#f7f7f7")
        host_names: set[str] = {lk.name for lk in host.links} if (host is not None and self.everything) else set()
        bridges: dict[str, str] = {}  # bridge -> network
        for name, netlist in specs.networks.items():
            bridge = bridge_of(netlist.plugins)
            if bridge:
                bridges[bridge] = name
        for ns in sorted(wanted):
            snap = self.snapshot_of(ns)
            label = f"netns {ns}" + ("" if snap is not None else " (MISSING)")
            attrs = {"style": "rounded"} if snap is not None else {"color": RED, "fontcolor": RED, "style": "dashed"}
            self.pic.cluster(ns, label, **attrs)
            if snap is None:
                continue
            for link in snap.links:
                if link.name == "lo" and not self.everything:
                    continue
                self.pic.add(ns, _link_node(ns, snap, link.name))
        # veth peers and bridge ports on the host side
        if host is not None:
            host_names |= self._veth_edges(wanted, host)
            host_names |= {b for b in bridges if host.link(b)}
            for link in host.links:  # every port of a bridge we draw
                master = host.link_by_index(link.master)
                if master is not None and master.name in host_names:
                    host_names.add(link.name)
            for name in sorted(host_names):
                self.pic.add(HOST, _link_node(HOST, host, name))
                link = host.link(name)
                master = host.link_by_index(link.master) if link else None
                if master is not None and master.name in host_names:
                    self.pic.edges.append(Edge(_nid(HOST, name), _nid(HOST, master.name),
                                               {"label": "port", "arrowhead": "odot"}))
        self._ownership(specs, records, drift, bridges, host)
        return self.pic

    def _veth_edges(self, wanted: set[str], host: Snapshot) -> set[str]:
        """Pair each namespace-side veth with its host-side peer; returns the host names involved."""
        involved: set[str] = set()
        drawn: set[tuple[str, str]] = set()
        spaces = {ns: self.snapshot_of(ns) for ns in wanted}
        spaces[HOST] = host
        for ns, snap in spaces.items():
            if snap is None or ns == HOST:
                continue
            for link in snap.links:
                if link.kind != "veth" or link.link is None:
                    continue
                for other_ns, other in spaces.items():
                    if other is None or other_ns == ns:
                        continue
                    peer = other.link_by_index(link.link)
                    if peer is None or peer.kind != "veth" or peer.link != link.index:
                        continue
                    pair = tuple(sorted((_nid(ns, link.name), _nid(other_ns, peer.name))))
                    if pair in drawn:
                        continue
                    drawn.add(pair)  # type: ignore[arg-type]
                    if other_ns == HOST:
                        involved.add(peer.name)
                    self.pic.edges.append(Edge(_nid(ns, link.name), _nid(other_ns, peer.name),
                                               {"dir": "none", "style": "bold", "label": "veth"}))
        return involved

    def _ownership(self, specs: Any, records: dict[str, Any], drift: dict[str, list[str]],
                   bridges: dict[str, str], host: Snapshot | None) -> None:
        self.pic.cluster("specs", f"specs: {specs.directory}", style="dashed")
        broken: dict[str, list[str]] = {}
        for err in specs.errors:
            broken.setdefault(getattr(err, "path", ""), []).append(str(err))
        for name, netlist in specs.networks.items():
            fid = f"file:{netlist.source}"
            self.pic.add("specs", Node(fid, f"{netlist.source}\nnetwork {name}", {"shape": "note"}))
            bridge = bridge_of(netlist.plugins)
            if bridge:
                if host is None or host.link(bridge) is None:
                    self.pic.add(HOST, _missing(HOST, "bridge", bridge))
                    self.pic.edges.append(Edge(fid, _nid(HOST, bridge), {"color": RED, "style": "dashed",
                                                                           "fontcolor": RED, "label": "bridge missing"}))
                else:
                    self.pic.edges.append(Edge(fid, _nid(HOST, bridge), {"style": "dashed", "label": "defines"}))
        for path, errors in broken.items():
            self.pic.add("specs", Node(f"file:{path}", f"{path}\nFAILED TO LOAD\n" + "\n".join(errors[:3]),
                                       {"shape": "note", "color": RED, "fontcolor": RED}))
        keys = sorted(set(records) | set(specs.attachments))
        for key in keys:
            rec = records.get(key)
            att = specs.attachments.get(key)
            file = att.file if att else rec.file
            ns = att.netns if att else rec.netns
            ifname = att.ifname if att else rec.ifname
            fid = f"file:{file}"
            if not self.pic.has(fid):
                self.pic.add("specs", Node(fid, f"{file}\nattachments", {"shape": "note"}))
            target = _nid(ns, ifname)
            problems = list(drift.get(key) or [])
            if rec is None:
                problems.append("not applied yet")
            elif att is None:
                problems.append("no longer in the specs: will be removed")
            snap = self.snapshot_of(ns)
            if snap is None or snap.link(ifname) is None:
                self.pic.add(ns, _missing(ns, "interface", ifname))
            elif problems:
                self.pic.add(ns, _link_node(ns, snap, ifname, drifted=True))
                self._recolour(target)
            label = key + ("".join(f"\nDRIFT: {p}" for p in problems))
            attrs = {"style": "dashed", "label": label}
            if problems:
                attrs.update(color=RED, fontcolor=RED)
            self.pic.edges.append(Edge(fid, target, attrs))
            self._ports(key, ns, ifname)

    def _recolour(self, node_id: str) -> None:
        for _, _, nodes in self.pic.clusters.values():
            for node in nodes:
                if node.id == node_id:
                    node.attrs.update(color=RED, fontcolor=RED)

    def _ports(self, key: str, ns: str, ifname: str) -> None:
        network, cid, _ = key.split("/", 2)
        entry = cache.read(self.engine.state_dir, network, cid, ifname)
        if entry is None:
            return
        mappings = entry.capability_args.get("portMappings") or []
        ips = [str(ip.get("address", "")).split("/")[0] for ip in (entry.result or {}).get("ips") or []]
        for pm in mappings if isinstance(mappings, list) else []:
            if not isinstance(pm, dict):
                continue
            proto = str(pm.get("protocol") or "tcp").lower()
            host_ip = str(pm.get("hostIP") or "*")
            dest = ", ".join(f"{ip}:{pm.get('containerPort')}" for ip in ips) or f":{pm.get('containerPort')}"
            nid = f"port:{host_ip}:{pm.get('hostPort')}/{proto}"
            self.pic.add(HOST, Node(nid, f"{host_ip}:{pm.get('hostPort')}/{proto}\n-> {dest}",
                                    {"shape": "cds", "style": "filled", "fillcolor": "#fff3d6"}))
            self.pic.edges.append(Edge(nid, _nid(ns, ifname), {"label": "DNAT", "color": "#b07d00"}))


def draw(engine: Engine, everything: bool = False, deep: bool = True) -> str:
    """The DOT text for the host as `engine` sees it."""
    return Drawing(engine, everything, deep).draw().to_dot()


def render(dot_text: str, fmt: str) -> bytes:
    """DOT as-is, or rendered to svg/png by Graphviz's `dot` (Debian package graphviz)."""
    if fmt == "dot":
        return dot_text.encode()
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    tool = shutil.which("dot")
    if tool is None:
        raise RuntimeError("Graphviz `dot` is not installed (apt-get install graphviz); use --format dot")
    proc = subprocess.run([tool, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"dot -T{fmt} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout
