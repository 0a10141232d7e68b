"""The result cache, in libcni's on-disk format and layout.

`<cache_dir>/results/<network>-<containerID>-<ifname>` holds
`{"kind": "cniCacheV1", "containerId", "config" (base64 of the list bytes),
"ifName", "networkName", "netns", "cniArgs", "capabilityArgs", "result"}`,
directories 0700 and files 0600, so a runtime and our tools read each other's cache.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.kernel import durable

KIND = "cniCacheV1"


@dataclass
class CacheEntry:
    container_id: str
    network_name: str
    ifname: str
    netns: str = ""
    config: bytes = b""
    cni_args: list[tuple[str, str]] = field(default_factory=list)
    capability_args: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": KIND,
            "containerId": self.container_id,
            "config": base64.b64encode(self.config).decode(),
            "ifName": self.ifname,
            "networkName": self.network_name,
            "netns": self.netns,
        }
        if self.cni_args:
            out["cniArgs"] = [list(pair) for pair in self.cni_args]
        if self.capability_args:
            out["capabilityArgs"] = self.capability_args
        if self.result is not None:
            out["result"] = self.result
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CacheEntry:
        return cls(
            container_id=str(data.get("containerId", "")),
            network_name=str(data.get("networkName", "")),
            ifname=str(data.get("ifName", "")),
            netns=str(data.get("netns", "")),
            config=base64.b64decode(data.get("config") or b""),
            cni_args=[(str(k), str(v)) for k, v in data.get("cniArgs") or []],
            capability_args=dict(data.get("capabilityArgs") or {}),
            result=data.get("result"),
        )


def results_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "results"


def entry_path(cache_dir: str | Path, network: str, container_id: str, ifname: str) -> Path:
    return results_dir(cache_dir) / f"{network}-{container_id}-{ifname}"


def write(cache_dir: str | Path, entry: CacheEntry) -> Path:
    """Write atomically (temp file + fsync + rename; mkstemp makes it owner-only). The fsync is
    skipped inside `durable.deferred` (the caller syncs the filesystem later)."""
    directory = results_dir(cache_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = entry_path(cache_dir, entry.network_name, entry.container_id, entry.ifname)
    durable.replace_file(path, json.dumps(entry.to_json()).encode(), deferrable=True)  # the C encoder
    return path


def read(cache_dir: str | Path, network: str, container_id: str, ifname: str) -> CacheEntry | None:
    """The cached entry, or None when absent or unreadable (libcni then proceeds without it)."""
    path = entry_path(cache_dir, network, container_id, ifname)
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if data.get("kind") != KIND:  # legacy cache: a bare result
        return CacheEntry(container_id, network, ifname, result=data)
    return CacheEntry.from_json(data)


def delete(cache_dir: str | Path, network: str, container_id: str, ifname: str) -> None:
    entry_path(cache_dir, network, container_id, ifname).unlink(missing_ok=True)


def list_entries(cache_dir: str | Path, network: str | None = None) -> list[CacheEntry]:
    """Every cniCacheV1 entry (sorted by file name), optionally of one network."""
    directory = results_dir(cache_dir)
    out: list[CacheEntry] = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return out
    for name in names:
        if name.startswith("."):
            continue
        try:
            data = json.loads((directory / name).read_bytes())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("kind") != KIND:
            continue
        entry = CacheEntry.from_json(data)
        if not entry.ifname or not entry.network_name:
            continue
        if network is None or entry.network_name == network:
            out.append(entry)
    return out
