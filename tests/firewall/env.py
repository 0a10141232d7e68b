"""A small test world for the chained plugins: a namespace standing in for the host with a
bridge network (reference bridge + host-local), containers on it, an outside client joined to
the host by a veth, and TCP/UDP echo servers. Everything carries the `rcn` prefix."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.cnitest import PluginRun, exec_plugin

REF = Path("/usr/lib/cni")
SERVER = r"""
import socket, sys
proto, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
fam = socket.AF_INET6 if len(sys.argv) > 4 else socket.AF_INET
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(fam, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port))
if kind == socket.SOCK_STREAM:
    s.listen(16)
print("ready", flush=True)
while True:
    if kind == socket.SOCK_STREAM:
        c, peer = s.accept()
        c.sendall(peer[0].encode() if token == b"PEER" else token)
        c.close()
    else:
        data, peer = s.recvfrom(100)
        s.sendto(peer[0].encode() if token == b"PEER" else token, peer)
"""
CLIENT = r"""
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
try:
    if proto == "tcp":
        c = socket.create_connection((host, port), timeout=3)
        print(c.recv(100).decode())
    else:
        c = socket.socket(fam, socket.SOCK_DGRAM)
        c.settimeout(3)
        c.sendto(b"x", (host, port))
        print(c.recv(100).decode())
except Exception as exc:
    print("ERR", type(exc).__name__)
"""


def sh(ns: str, *cmd: str, check: bool = True) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} in {ns}: {proc.stderr}")
    return proc.stdout


class World:
    """Host namespace + bridge network; call close() (the fixture does) to stop servers."""

    def __init__(self, make_netns: Any, tmp: Path, subnet: str = "10.250.0.0/24", name: str = "rcnpm",
                 subnet6: str | None = None, host: str | None = None) -> None:
        """`host`: share another World's host namespace (a second network on the same host)."""
        self.make_netns = make_netns
        self.host = host or make_netns("rcn-h-")[0]
        self.tmp = tmp
        self.name = name
        self.bridge = "rcnbr" + uuid.uuid4().hex[:6]
        self.subnet = subnet
        self.subnet6 = subnet6
        self.servers: list[subprocess.Popen] = []
        sh(self.host, "ip", "link", "set", "lo", "up")
        sh(self.host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        if subnet6:  # no DAD delays in our own namespaces
            sh(self.host, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.default.accept_dad=0",
               "net.ipv6.conf.all.accept_dad=0")

    def bridge_conf(self) -> dict[str, Any]:
        ipam: dict[str, Any] = {"type": "host-local", "subnet": self.subnet, "dataDir": str(self.tmp / "ipam"),
                                "routes": [{"dst": "0.0.0.0/0"}]}
        if self.subnet6:
            ipam = {"type": "host-local", "dataDir": str(self.tmp / "ipam"),
                    "ranges": [[{"subnet": self.subnet}], [{"subnet": self.subnet6}]],
                    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}
        return {"cniVersion": "1.0.0", "name": self.name, "type": "bridge", "bridge": self.bridge,
                "isGateway": True, "hairpinMode": True, "ipam": ipam}

    def container(self, cid: str) -> tuple[str, str, dict[str, Any]]:
        """A container namespace attached with the reference bridge: (name, path, result)."""
        name, path = self.make_netns("rcn-c-")
        if self.subnet6:
            sh(name, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0")
        run = exec_plugin(REF / "bridge", "ADD", self.bridge_conf(), netns=path, container_id=cid,
                          cni_path=REF, netns_exec=self.host)
        assert run.code == 0, run.stdout + run.stderr
        sh(name, "ip", "link", "set", "lo", "up")
        return name, path, run.json

    def outside_client(self) -> tuple[str, str]:
        """A namespace joined to the host by a veth (10.251.0.2 -> host 10.251.0.1)."""
        name, _ = self.make_netns("rcn-o-")
        veth = "rcnv" + uuid.uuid4().hex[:6]
        sh(self.host, "ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
        sh(self.host, "ip", "addr", "add", "10.251.0.1/24", "dev", veth)
        sh(self.host, "ip", "link", "set", veth, "up")
        sh(name, "ip", "addr", "add", "10.251.0.2/24", "dev", "eth0")
        sh(name, "ip", "link", "set", "eth0", "up")
        sh(name, "ip", "link", "set", "lo", "up")
        sh(name, "ip", "route", "add", "default", "via", "10.251.0.1")
        if self.subnet6:
            sh(self.host, "ip", "addr", "add", "fd00:251::1/64", "dev", veth, "nodad")
            sh(name, "ip", "addr", "add", "fd00:251::2/64", "dev", "eth0", "nodad")
            sh(name, "ip", "-6", "route", "add", "default", "via", "fd00:251::1")
        return name, "10.251.0.1"

    def serve(self, ns: str, port: int, token: str, proto: str = "tcp", family6: bool = False) -> None:
        """An echo server; `family6` binds [::] (dual-stack) instead of 0.0.0.0."""
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, proto, str(port), token]
        proc = subprocess.Popen(cmd + (["6"] if family6 else []), stdout=subprocess.PIPE, text=True)
        self.servers.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def connect(self, ns: str, host: str, port: int, proto: str = "tcp") -> str:
        return sh(ns, sys.executable, "-c", CLIENT, proto, host, str(port)).strip()

    def close(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()


def portmap_conf(name: str, prev: dict[str, Any], mappings: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    conf = {"cniVersion": "1.0.0", "name": name, "type": "portmap", "capabilities": {"portMappings": True},
            "runtimeConfig": {"portMappings": mappings}, "prevResult": prev}
    conf.update(extra)
    return conf


def run_plugin(binary: Path, command: str, conf: dict[str, Any], world: World, cid: str, netns: str) -> PluginRun:
    return exec_plugin(binary, command, conf, netns=netns, container_id=cid, cni_path=REF, netns_exec=world.host)


def nat_lines(ns: str, tool: str = "iptables-legacy-save") -> list[str]:
    """Chains and rules of the nat table (counters dropped), for comparison."""
    out = sh(ns, tool, "-t", "nat", check=False)
    return [line.split(" [")[0] if line.startswith(":") else line
            for line in out.splitlines() if line.startswith((":", "-A"))]


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1)
