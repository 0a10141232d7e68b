"""Load and validate a specs directory, keeping provenance (file, field, line).

A specs directory holds CNI network configs (`.conflist`, `.conf`, `.json`) and
attachment files (`.toml`). Every problem becomes a `SpecError` naming the
file, the field and, where TOML lets us find it, the line. A file with an error
is reported and skipped; its name lands in `Specs.broken_files` so the planner
never prunes what that file used to describe.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from reconciler.cni.args import validate_container_id, validate_ifname
from reconciler.cni.conf import NetworkConfigList, conflist_from_bytes
from reconciler.errors import CNIError, SpecError

NETWORK_EXTENSIONS = (".conflist", ".conf", ".json")
NETNS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
NETNS_RUN_DIR = "/run/netns"


class AttachmentModel(BaseModel):
    """One `[[attachment]]` table, exactly as written."""

    model_config = ConfigDict(extra="forbid")

    id: str
    network: str
    netns: str
    ifname: str = "eth0"
    args: dict[str, str] = Field(default_factory=dict)
    capabilities: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        try:
            validate_container_id(v)
        except CNIError as err:
            raise ValueError(err.msg) from err
        return v

    @field_validator("ifname")
    @classmethod
    def _ifname(cls, v: str) -> str:
        try:
            validate_ifname(v)
        except CNIError as err:
            raise ValueError(err.msg) from err
        return v

    @field_validator("netns")
    @classmethod
    def _netns(cls, v: str) -> str:
        if v.startswith("/"):
            return v
        if not NETNS_NAME_RE.match(v):
            raise ValueError("must be a namespace name ([A-Za-z0-9_.-], max 64) or an absolute path")
        return v

    @field_validator("args")
    @classmethod
    def _args(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if any(c in f"{key}{value}" for c in ";="):
                raise ValueError(f"{key}: CNI_ARGS keys and values may not contain ';' or '='")
        return v


@dataclass(frozen=True)
class Attachment:
    """A desired attachment with its provenance."""

    id: str
    network: str
    netns: str
    ifname: str
    args: tuple[tuple[str, str], ...]
    capabilities: dict[str, Any]
    file: str
    line: int | None = None

    @property
    def key(self) -> str:
        return attachment_key(self.network, self.id, self.ifname)

    @property
    def netns_path(self) -> str:
        return netns_path(self.netns)

    @property
    def owns_netns(self) -> bool:
        """A bare name is created and owned by the reconciler; a path is someone else's."""
        return not self.netns.startswith("/")

    def fingerprint(self, network: NetworkConfigList) -> str:
        """Everything that, when changed, replaces the attachment."""
        body = json.dumps(
            {
                "netns": self.netns,
                "args": list(self.args),
                "capabilities": self.capabilities,
                "network": network.raw.decode("utf-8", "replace"),
            },
            sort_keys=True,
        )
        return hashlib.sha256(body.encode()).hexdigest()[:16]


@dataclass
class Specs:
    """The outcome of loading a directory: valid networks and attachments, plus every error."""

    directory: str
    networks: dict[str, NetworkConfigList] = field(default_factory=dict)
    attachments: dict[str, Attachment] = field(default_factory=dict)
    errors: list[SpecError] = field(default_factory=list)
    broken_files: set[str] = field(default_factory=set)
    protected_keys: set[str] = field(default_factory=set)
    protected_networks: set[str] = field(default_factory=set)

    unreadable: bool = False  # the directory itself is missing: nothing may be planned from it

    def error(self, err: SpecError, key: str | None = None) -> None:
        self.errors.append(err)
        if key:
            self.protected_keys.add(key)
        else:
            self.broken_files.add(os.path.abspath(err.path))

    def protected_because(self, key: str, network: str, file: str, network_file: str) -> str | None:
        """Why a record that no loaded spec names must not be pruned (None: it may be).

        Its own entry or file failed to load; or an attachments file did: entries move between
        files, and a broken one may name it now (its record still names the file it came from)."""
        if (key in self.protected_keys or network in self.protected_networks
                or os.path.abspath(file) in self.broken_files or os.path.abspath(network_file) in self.broken_files):
            return "its spec file failed to load; left untouched"
        broken = sorted(f for f in self.broken_files if f.endswith(".toml"))
        if broken:
            return f"not pruned while {broken[0]} fails to load (it may name it now); left untouched"
        return None


def network_hash(network: NetworkConfigList) -> str:
    return hashlib.sha256(network.raw).hexdigest()[:16]


def attachment_key(network: str, container_id: str, ifname: str) -> str:
    return f"{network}/{container_id}/{ifname}"


def netns_path(netns: str) -> str:
    return netns if netns.startswith("/") else f"{NETNS_RUN_DIR}/{netns}"


def _toml_line(text: str, message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


def _table_lines(text: str) -> list[int]:
    """1-based line numbers of each `[[attachment]]` header, in order."""
    return [i for i, line in enumerate(text.splitlines(), 1) if re.match(r"\s*\[\[\s*attachment\s*\]\]", line)]


def _field_line(text: str, start: int | None, name: str) -> int | None:
    """The line of `name = ...` in the table starting at `start` (or the table line itself)."""
    if start is None:
        return None
    lines = text.splitlines()
    for i in range(start, len(lines)):
        line = lines[i]
        if i >= start and re.match(r"\s*\[\[?\s*attachment\s*\]\]?\s*$", line) and i + 1 != start:
            break
        if re.match(rf"\s*{re.escape(name)}\s*=", line):
            return i + 1
    return start


def _load_network_file(specs: Specs, path: Path, network_files: dict[str, str]) -> None:
    source = str(path)
    try:
        netlist = conflist_from_bytes(path.read_bytes(), source)
    except CNIError as err:
        problem = err.msg if not err.details else f"{err.msg}: {err.details}"
        problem = problem.removeprefix(f"{source}: ")
        fld, _, rest = problem.partition(": ")
        if " " in fld or not rest:
            fld, rest = "", problem
        specs.error(SpecError(source, fld, rest))
        return
    except OSError as err:
        specs.error(SpecError(source, "", f"cannot read: {err.strerror}"))
        return
    if netlist.name in specs.networks:
        specs.protected_networks.add(netlist.name)
        specs.error(
            SpecError(source, "name", f"network {netlist.name!r} is already defined in {network_files[netlist.name]}")
        )
        return
    specs.networks[netlist.name] = netlist
    network_files[netlist.name] = source


def _load_attachment_file(specs: Specs, path: Path) -> list[Attachment]:
    source = str(path)
    try:
        text = path.read_text()
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        specs.error(SpecError(source, "", f"invalid TOML: {err}", _toml_line("", str(err))))
        return []
    except (OSError, UnicodeDecodeError) as err:
        specs.error(SpecError(source, "", f"cannot read: {err}"))
        return []
    unknown = sorted(set(doc) - {"attachment"})
    if unknown:
        specs.error(SpecError(source, unknown[0], "unknown top-level key (expected [[attachment]] tables)"))
        return []
    tables = doc.get("attachment", [])
    if not isinstance(tables, list):
        specs.error(SpecError(source, "attachment", "must be an array of tables ([[attachment]])"))
        return []
    headers = _table_lines(text)
    out: list[Attachment] = []
    bad = False
    for index, table in enumerate(tables):
        start = headers[index] if index < len(headers) else None
        try:
            model = AttachmentModel.model_validate(table)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = [str(p) for p in first.get("loc", ())]
            fld = f"attachment[{index}]." + ".".join(loc) if loc else f"attachment[{index}]"
            msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
            if first.get("type") == "extra_forbidden":
                msg = "unknown field"
            line = _field_line(text, start, loc[0]) if loc else start
            specs.errors.append(SpecError(source, fld, msg, line))
            # protect what this entry may have described: its identity if known, and its whole file
            if isinstance(table, dict) and {"id", "network"} <= set(table):
                key = attachment_key(str(table["network"]), str(table["id"]), str(table.get("ifname", "eth0")))
                specs.protected_keys.add(key)
            bad = True
            continue
        out.append(
            Attachment(
                id=model.id,
                network=model.network,
                netns=model.netns,
                ifname=model.ifname,
                args=tuple(sorted(model.args.items())),
                capabilities=model.capabilities,
                file=source,
                line=start,
            )
        )
    if bad:
        specs.broken_files.add(os.path.abspath(source))
    return out


def _subnets(netlist: NetworkConfigList) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = []
    for plugin in netlist.plugins:
        ipam = plugin.get("ipam")
        if not isinstance(ipam, dict):
            continue
        candidates: list[Any] = []
        if ipam.get("subnet"):
            candidates.append(ipam["subnet"])
        for rangeset in ipam.get("ranges") or []:
            for rng in rangeset if isinstance(rangeset, list) else []:
                if isinstance(rng, dict) and rng.get("subnet"):
                    candidates.append(rng["subnet"])
        for cand in candidates:
            try:
                nets.append(ipaddress.ip_network(str(cand), strict=False))
            except ValueError:
                continue
    return nets


def _segment(netlist: NetworkConfigList) -> str:
    """What L2 segment a network lives on: a bridge name, or the network itself."""
    first = netlist.plugins[0]
    if first.get("type") == "bridge":
        return f"bridge:{first.get('bridge') or 'cni0'}"
    return f"network:{netlist.name}"


def _check_overlaps(specs: Specs) -> None:
    seen: list[tuple[str, str, Any]] = []
    for name in sorted(specs.networks):
        netlist = specs.networks[name]
        clash = None
        for subnet in _subnets(netlist):
            for other_name, segment, other in seen:
                if segment != _segment(netlist) and other.version == subnet.version and other.overlaps(subnet):
                    clash = f"subnet {subnet} overlaps {other} of network {other_name!r} on another segment"
        if clash:
            specs.protected_networks.add(name)
            del specs.networks[name]
            specs.errors.append(SpecError(netlist.source, "ipam.ranges", clash))
            continue
        seen.extend((name, _segment(netlist), s) for s in _subnets(netlist))


def _port_claims(att: Attachment) -> list[tuple[str, str, int]]:
    claims = []
    for pm in att.capabilities.get("portMappings") or []:
        if isinstance(pm, dict) and "hostPort" in pm:
            host_ip = str(pm.get("hostIP") or "")
            claims.append((host_ip, str(pm.get("protocol") or "tcp").lower(), int(pm["hostPort"])))
    return claims


def _cross_check(specs: Specs, candidates: list[Attachment]) -> None:
    ifnames: dict[tuple[str, str], Attachment] = {}
    ports: dict[tuple[str, str, int], Attachment] = {}
    for att in candidates:
        key = att.key
        if att.network not in specs.networks:
            if att.network in specs.protected_networks:
                specs.protected_keys.add(key)
                continue
            specs.error(SpecError(att.file, "network", f"unknown network {att.network!r} (attachment {att.id!r})", att.line), key)
            continue
        if key in specs.attachments:
            first = specs.attachments[key]
            specs.error(
                SpecError(att.file, "id", f"attachment {key} is already defined in {first.file}:{first.line}", att.line), key
            )
            continue
        where = (att.netns_path, att.ifname)
        if where in ifnames:
            first = ifnames[where]
            specs.error(
                SpecError(att.file, "ifname", f"{att.ifname} in netns {att.netns} is already claimed by {first.key}", att.line),
                key,
            )
            continue
        clash = None
        for host_ip, proto, port in _port_claims(att):
            for (o_ip, o_proto, o_port), other in ports.items():
                wildcard = host_ip in ("", "0.0.0.0", "::") or o_ip in ("", "0.0.0.0", "::")
                if o_proto == proto and o_port == port and (wildcard or o_ip == host_ip):
                    clash = f"hostPort {port}/{proto} on {host_ip or '*'} is already claimed by {other.key}"
        if clash:
            specs.error(SpecError(att.file, "capabilities.portMappings", clash, att.line), key)
            continue
        specs.attachments[key] = att
        ifnames[where] = att
        for claim in _port_claims(att):
            ports[claim] = att


def _spec_files(root: Path) -> list[Path]:
    """Every file under `root`, skipping dot-files and dot-directories (a git checkout's .git/)."""
    out = []
    for current, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out.extend(Path(current) / n for n in names if not n.startswith("."))
    return out


def load_specs(directory: str | Path) -> Specs:
    """Load every spec file under `directory` (recursively, sorted)."""
    root = Path(directory)
    specs = Specs(directory=str(root))
    if not root.is_dir():
        specs.errors.append(SpecError(str(root), "", "specs directory does not exist"))
        specs.unreadable = True
        return specs
    files = sorted(_spec_files(root))
    network_files: dict[str, str] = {}
    for path in files:
        if path.suffix in NETWORK_EXTENSIONS:
            _load_network_file(specs, path, network_files)
    _check_overlaps(specs)
    candidates: list[Attachment] = []
    for path in files:
        if path.suffix == ".toml":
            candidates.extend(_load_attachment_file(specs, path))
    _cross_check(specs, candidates)
    return specs
