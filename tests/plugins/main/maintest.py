"""Shared pieces of the main-plugin tests: a host/container namespace world, plugin runs, state dumps, ping."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cnitest import REFERENCE_DIR, PluginRun, run_plugin
from tests.conftest import unique

REFERENCE = REFERENCE_DIR  # the name the main-plugin tests import


PING = r"""
import os, socket, struct, sys, time
dst = sys.argv[1]
v6 = ":" in dst
fam, proto, typ = (socket.AF_INET6, socket.IPPROTO_ICMPV6, 128) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP, 8)
s = socket.socket(fam, socket.SOCK_RAW, proto)
s.settimeout(0.5)
ident = os.getpid() & 0xFFFF
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b)); t = (t >> 16) + (t & 0xFFFF); t += t >> 16
    return ~t & 0xFFFF
for seq in range(int(sys.argv[2])):
    body = struct.pack("!BBHHH", typ, 0, 0, ident, seq) + b"rcnping"
    if not v6:
        body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    s.sendto(body, (dst, 0))
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        try:
            data, _ = s.recvfrom(2048)
        except socket.timeout:
            break
        icmp = data if v6 else data[(data[0] & 0xF) * 4:]
        if icmp[0] == (129 if v6 else 0) and struct.unpack("!H", icmp[4:6])[0] == ident:
            sys.exit(0)
sys.exit(1)
"""


def ping(ns_name: str, dst: str, attempts: int = 10) -> bool:
    """ICMP echo from inside `ns_name` (raw socket, no ping binary needed)."""
    proc = subprocess.run(["ip", "netns", "exec", ns_name, sys.executable, "-c", PING, dst, str(attempts)],
                          capture_output=True, text=True, timeout=600)
    return proc.returncode == 0


@dataclass
class World:
    """A namespace standing in for the host, container namespaces, a tmp IPAM dataDir, CNI_PATH."""

    host: str  # name of the host namespace
    make_netns: Any
    data_dir: Path
    cni_path: str
    net: str = field(default_factory=lambda: unique("rcnnet"))

    def container(self) -> tuple[str, str]:
        return self.make_netns()

    def run(self, binary: Path | str, command: str, conf: dict, netns: str, *, ifname: str = "eth0",
            container_id: str = "ctr1", cni_args: str = "", cni_path: str | None = None) -> PluginRun:
        """Exec `binary` inside the host namespace. In the VM job (RCN_IN_VM) ours runs in-process through
        skel.run with RECONCILER_HOST_NETNS: the same code without interpreter start-up, which takes tens
        of seconds per exec under CPU emulation."""
        return run_plugin(binary, command, conf, netns=netns, host_netns=self.host, ifname=ifname,
                          container_id=container_id, cni_path=cni_path or self.cni_path, cni_args=cni_args)

def ip_json(ns: str, *args: str) -> Any:
    out = subprocess.run(["ip", "-n", ns, "-j", "-d", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def stp_id_and_mac(link: dict) -> tuple[list[int], list[int]]:
    """(the STP bridge id's address, the MAC) of a bridge from `ip -j -d link`, as bytes (`ip` prints
    the id's bytes unpadded)."""
    bridge_id = link["linkinfo"]["info_data"]["bridge_id"].split(".", 1)[1]
    return [int(b, 16) for b in bridge_id.split(":")], [int(b, 16) for b in link["address"].split(":")]


def ns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def read_sysctl(ns: str, key: str) -> str | None:
    proc = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/sys/" + key.replace(".", "/")],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


VETH_RE = re.compile(r"^veth[0-9a-f]{8}$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def normalise_result(result: dict, sandboxes: dict[str, str] | None = None) -> dict:
    """Random names, MACs and sandbox paths replaced by placeholders; empty dns dropped."""
    out = json.loads(json.dumps(result))
    for iface in out.get("interfaces", []):
        if VETH_RE.match(iface.get("name", "")):
            iface["name"] = "vethXXXXXXXX"
        if "mac" in iface:
            iface["mac"] = "MAC" if MAC_RE.match(iface["mac"]) and iface["mac"] != "00:00:00:00:00:00" else iface["mac"]
        if "sandbox" in iface:
            iface["sandbox"] = (sandboxes or {}).get(iface["sandbox"], "SANDBOX")
    if out.get("dns") == {}:
        del out["dns"]
    return out


def links_state(ns: str, ignore: tuple[str, ...] = ("lo",)) -> list[dict]:
    """Comparable link facts of a namespace: names normalised, kinds, masters, flags, MTU, port flags."""
    links = ip_json(ns, "link", "show")
    names = {lk["ifindex"]: lk["ifname"] for lk in links}

    def norm(name: str | None) -> str | None:
        return "vethX" if name and VETH_RE.match(name) else name

    out = []
    for lk in links:
        if lk["ifname"] in ignore:
            continue
        info = lk.get("linkinfo", {})
        slave = info.get("info_slave_data", {})
        out.append({
            "name": norm(lk["ifname"]),
            "kind": info.get("info_kind", ""),
            "master": norm(names.get(lk.get("master")) if isinstance(lk.get("master"), int) else lk.get("master")),
            "mtu": lk["mtu"],
            "up": "UP" in lk.get("flags", []),
            "promisc": lk.get("promiscuity", 0) > 0 and info.get("info_kind") == "bridge",
            "hairpin": slave.get("hairpin"),
            "isolated": slave.get("isolated"),
            "macvlan_mode": info.get("info_data", {}).get("mode") if info.get("info_kind") == "macvlan" else None,
        })
    return sorted(out, key=lambda d: (d["kind"], d["name"] or ""))


def addrs_state(ns: str) -> list[tuple[str, str]]:
    """(ifname, address/prefix) of global addresses."""
    out = []
    for lk in ip_json(ns, "addr", "show"):
        for a in lk.get("addr_info", []):
            if a.get("scope") == "global":
                name = "vethX" if VETH_RE.match(lk["ifname"]) else lk["ifname"]
                out.append((name, f"{a['local']}/{a['prefixlen']}"))
    return sorted(out)


def routes_state(ns: str) -> list[tuple]:
    out = []
    for fam in ("-4", "-6"):
        for r in json.loads(subprocess.run(["ip", "-n", ns, "-j", fam, "route", "show", "table", "main"],
                                           capture_output=True, text=True, check=True).stdout or "[]"):
            if r.get("dst", "").startswith("fe80"):
                continue
            dev = r.get("dev", "")
            dev = "vethX" if VETH_RE.match(dev) else dev
            out.append((r.get("dst"), r.get("gateway"), dev, r.get("scope"), r.get("protocol"), r.get("prefsrc")))
    return sorted(out, key=lambda t: tuple(str(x) for x in t))
