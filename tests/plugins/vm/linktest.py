"""Helpers for the single-interface plugin tests: a host stand-in namespace with a parent link,
container namespaces, plugin runs (ours or the reference) with a private IPAM dataDir, and
normalised kernel state for differential comparisons."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cnitest import REFERENCE_DIR as REFERENCE
from tests.cnitest import PluginRun, in_vm, run_plugin
from tests.conftest import unique

COLD = {"RECONCILER_PLUGIN_SOCKET": "/nonexistent/rcn-test.sock"}  # never forward to a warm daemon
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")

PING = r"""
import os, socket, struct, sys, time
dst = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(0.5)
ident = os.getpid() & 0xFFFF
def csum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b)); t = (t >> 16) + (t & 0xFFFF); t += t >> 16
    return ~t & 0xFFFF
for seq in range(int(sys.argv[2])):
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"rcnping!"
    body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    s.sendto(body, (dst, 0))
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        try:
            data = s.recv(2048)
        except socket.timeout:
            break
        icmp = data[(data[0] & 0xF) * 4:]
        if icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
            sys.exit(0)
sys.exit(1)
"""


def ping(ns_name: str, dst: str, attempts: int = 10) -> bool:
    """IPv4 ICMP echo from inside `ns_name` (raw socket; no ping binary needed)."""
    proc = subprocess.run(["ip", "netns", "exec", ns_name, sys.executable, "-c", PING, dst, str(attempts)],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode == 0


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def ip_json(ns: str, *args: str) -> Any:
    out = ip("-n", ns, "-j", "-d", *args).stdout
    return json.loads(out or "[]")


def link_json(ns: str, name: str) -> dict | None:
    proc = ip("-n", ns, "-j", "-d", "link", "show", "dev", name, check=False)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout or "[]")
    return data[0] if data else None


def link_names(ns: str) -> list[str]:
    return sorted(lk["ifname"] for lk in ip_json(ns, "link", "show"))


@dataclass
class Env:
    """One test's world: `host` namespace (stands in for the host), a data dir, plugin dirs."""

    host: str
    make_netns: Any
    tmp: Path
    ours: Path  # our installed plugin executables
    net: str = field(default_factory=lambda: unique("rcnnet"))

    def container(self) -> tuple[str, str]:
        return self.make_netns()

    def conf(self, plugin: str, *, version: str = "1.0.0", ipam: dict | None = None, **fields: Any) -> dict:
        out: dict[str, Any] = {"cniVersion": version, "name": self.net, "type": plugin, **fields}
        if ipam is not None:
            out["ipam"] = ipam
        return out

    def host_local(self, *subnets: str, routes: list[dict] | None = None) -> dict:
        ranges = [[{"subnet": s}] for s in subnets]
        ipam: dict[str, Any] = {"type": "host-local", "ranges": ranges, "dataDir": str(self.tmp / "ipam")}
        if routes is not None:
            ipam["routes"] = routes
        return ipam

    def run(self, command: str, conf: dict, netns: str, *, reference: bool = False, ifname: str = "eth0",
            container_id: str = "ctr1", cni_args: str = "", prev: dict | None = None) -> PluginRun:
        """Exec the plugin (ours, or the reference binary) inside the host namespace.

        With `in_process()` ours runs through skel.run in this process instead (host work aimed at
        the host namespace by RECONCILER_HOST_NETNS): the same code minus interpreter start-up,
        which costs tens of seconds per call under the VM job's CPU emulation."""
        if prev is not None:
            conf = {**conf, "prevResult": prev}
        base = REFERENCE if reference else self.ours
        return run_plugin(base / conf["type"], command, conf, netns=netns, host_netns=self.host, ifname=ifname,
                          container_id=container_id, cni_path=base, cni_args=cni_args,
                          extra_env={**COLD, "CNI_NETNS_OVERRIDE": "1"}, in_process=in_process())

    def allocated(self) -> list[str]:
        """Addresses host-local holds in this test's dataDir."""
        d = self.tmp / "ipam" / self.net
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if p.name[0].isdigit() or ":" in p.name)


def ok(run: PluginRun) -> Any:
    assert run.code == 0, f"plugin failed ({run.code}): {run.stdout} {run.stderr[-2000:]}"
    return run.json


def failed(run: PluginRun) -> dict:
    assert run.code != 0, f"plugin unexpectedly succeeded: {run.stdout}"
    err = run.json
    assert isinstance(err, dict) and "code" in err and "msg" in err, run.stdout + run.stderr
    return err


def normalise(result: dict, sandboxes: dict[str, str] | None = None) -> dict:
    """MACs and sandbox paths replaced by placeholders so that two runs compare."""
    out = json.loads(json.dumps(result))
    for iface in out.get("interfaces", []):
        if MAC_RE.match(iface.get("mac", "")):
            iface["mac"] = "MAC"
        if "sandbox" in iface:
            iface["sandbox"] = (sandboxes or {}).get(iface["sandbox"], "SANDBOX")
    if out.get("dns") == {}:
        del out["dns"]
    return out


def container_state(ns: str) -> dict:
    """Comparable facts of a container: links (kind, mtu, up, kind data), global addresses, routes."""
    links = []
    for lk in ip_json(ns, "link", "show"):
        info = lk.get("linkinfo", {})
        data = info.get("info_data", {})
        links.append({
            "name": lk["ifname"], "kind": info.get("info_kind", ""), "mtu": lk["mtu"],
            "up": "UP" in lk.get("flags", []),
            "data": {k: data.get(k) for k in ("mode", "id", "protocol", "type") if k in data},
        })
    addrs = sorted((lk["ifname"], f"{a['local']}/{a['prefixlen']}")
                   for lk in ip_json(ns, "addr", "show") for a in lk.get("addr_info", [])
                   if a.get("scope") == "global")
    routes = []
    for fam in ("-4", "-6"):
        for r in json.loads(ip("-n", ns, "-j", fam, "route", "show", "table", "main").stdout or "[]"):
            if not r.get("dst", "").startswith("fe80"):
                routes.append((r.get("dst"), r.get("gateway"), r.get("dev"), r.get("scope"), r.get("prefsrc")))
    return {"links": sorted(links, key=lambda d: d["name"]), "addrs": addrs,
            "routes": sorted(routes, key=lambda t: tuple(str(x) for x in t))}


def sysctl_in(ns: str, key: str) -> str | None:
    path = "/proc/sys/" + key.replace(".", "/")
    proc = subprocess.run(["ip", "netns", "exec", ns, "cat", path], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def in_process() -> bool:
    """Run our plugins in-process: always inside the VM job, on the host when RCN_INPROC=1."""
    return os.environ.get("RCN_INPROC", "1" if in_vm() else "0") == "1"
