"""Helpers shared by the IPAM tests: config builders, in-process calls, store snapshots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reconciler.cni.args import CmdArgs

REF_HOST_LOCAL = Path("/usr/lib/cni/host-local")
REF_STATIC = Path("/usr/lib/cni/static")


def hl_conf(
    data_dir: Path | str,
    *range_sets: list[dict[str, Any]],
    name: str = "rcnnet",
    version: str = "1.0.0",
    **ipam: Any,
) -> dict[str, Any]:
    """A host-local network config with `ranges` = range_sets."""
    body: dict[str, Any] = {"type": "host-local", "dataDir": str(data_dir)}
    if range_sets:
        body["ranges"] = [list(rs) for rs in range_sets]
    body.update(ipam)
    return {"cniVersion": version, "name": name, "ipam": body}


def call(
    module: Any, verb: str, conf: dict[str, Any], cid: str = "ctr1", ifname: str = "eth0", cni_args: str = ""
) -> Any:
    """Run one verb of a plugin module in-process."""
    args = CmdArgs.build(
        verb,
        json.dumps(conf).encode(),
        container_id=cid,
        ifname=ifname,
        netns="/proc/self/ns/net",
        args=cni_args,
        path="",
    )
    func = {"ADD": "add", "DEL": "delete", "CHECK": "check", "GC": "gc", "STATUS": "status"}[verb]
    return getattr(module, func)(args)


def files_of(directory: Path) -> dict[str, bytes]:
    """Every regular file of a network directory (except the lock) and its content."""
    if not directory.exists():
        return {}
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file() and p.name != "lock"}
