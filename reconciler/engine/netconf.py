"""How the engine adjusts a network config list before running it (the spec files stay untouched)."""

from __future__ import annotations

import json

from reconciler.cni.conf import NetworkConfigList, conflist_from_bytes


def with_data_dir(netlist: NetworkConfigList, data_dir: str) -> NetworkConfigList:
    """host-local sections without `dataDir` use the state's `networks/` store, exec'd or not."""
    obj = json.loads(netlist.raw)
    changed = False
    for plugin in obj.get("plugins") or []:
        ipam = plugin.get("ipam") if isinstance(plugin, dict) else None
        if isinstance(ipam, dict) and ipam.get("type") == "host-local" and not ipam.get("dataDir"):
            ipam["dataDir"] = data_dir
            changed = True
    if not changed:
        return netlist
    return conflist_from_bytes(json.dumps(obj).encode(), netlist.source)


def with_requested_ips(netlist: NetworkConfigList, ips: list[str]) -> NetworkConfigList:
    """Ask host-local/static for these addresses again (`args.cni.ips`), so a repair keeps them."""
    obj = json.loads(netlist.raw)
    bare = [ip.split("/")[0] for ip in ips]
    for plugin in obj.get("plugins") or []:
        ipam = plugin.get("ipam") if isinstance(plugin, dict) else None
        if isinstance(ipam, dict) and ipam.get("type") in ("host-local",) and bare:
            args = plugin.setdefault("args", {})
            args.setdefault("cni", {})["ips"] = bare
    return conflist_from_bytes(json.dumps(obj).encode(), netlist.source)
