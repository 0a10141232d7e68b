"""Fixtures for the operations tests: a stand-in host namespace, a known specs dir, a state dir.

The reconciler runs as a real process entered into the stand-in host namespace
(`nsenter --net`), so its bridge, veths, port-mapping chains and the metrics
listener on 127.0.0.1 all live there and vanish with it. The attachment
namespaces it creates carry a per-test `rcn-o…` prefix and are deleted at
teardown even on failure.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class OpsRig:
    host: str
    prefix: str
    specs: Path
    state: Path
    base: str  # "10.A.B"
    bridge: str
    env: dict[str, str] = field(default_factory=dict)

    def cmd(self, *args: str, state: bool = True) -> list[str]:
        extra = ["--specs", str(self.specs), "--state", str(self.state)] if state else []
        return ["nsenter", f"--net=/run/netns/{self.host}", sys.executable, "-m", "reconciler", *args, *extra]

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 240,
            state: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(self.cmd(*args, state=state), capture_output=True, text=True,
                              env={**self.env, **(env or {})}, timeout=timeout)

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**self.env, **(env or {})})

    def ns(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def write_specs(self) -> dict[str, list[str]]:
        """One bridge network with host-local and portmap, three attachments (one with a port mapping)."""
        net = {
            "cniVersion": "1.0.0",
            "name": f"{self.prefix}net",
            "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": f"{self.base}.0/24"}]]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (self.specs / "net.conflist").write_text(json.dumps(net, indent=1))
        lines = []
        for i, name in enumerate(("a", "b", "c")):
            lines += ["[[attachment]]", f'id = "{self.prefix}{name}"', f'network = "{self.prefix}net"',
                      f'netns = "{self.ns(name)}"']
            if i == 0:
                lines += ["[attachment.capabilities]",
                          f'portMappings = [{{ hostPort = {18000 + random.randint(0, 999)}, containerPort = 80, '
                          'protocol = "tcp" }]']
            lines.append("")
        (self.specs / "apps.toml").write_text("\n".join(lines))
        return {"namespaces": [self.ns(n) for n in "abc"], "bridges": [self.bridge]}

    @property
    def network(self) -> str:
        return f"{self.prefix}net"

    def addrs(self, ns: str, ifname: str = "eth0") -> list[str]:
        out = subprocess.run(["ip", "-j", "-n", ns, "addr", "show", "dev", ifname], capture_output=True, text=True)
        if out.returncode != 0:
            return []
        data = json.loads(out.stdout or "[]")
        return sorted(f"{a['local']}/{a['prefixlen']}" for d in data for a in d.get("addr_info", [])
                      if a.get("scope") == "global")

    def host_addrs(self, ifname: str) -> list[str]:
        out = subprocess.run(["ip", "-j", "-n", self.host, "addr", "show", "dev", ifname],
                             capture_output=True, text=True)
        data = json.loads(out.stdout or "[]")
        return sorted(f"{a['local']}/{a['prefixlen']}" for d in data for a in d.get("addr_info", [])
                      if a.get("scope") == "global")

    def in_host(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.host, *cmd], capture_output=True, text=True,
                              timeout=timeout)

    def scrape(self, port: int) -> str | None:
        """GET /metrics from inside the stand-in host (None while nothing listens)."""
        code = (f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics',"
                "timeout=5).read().decode())")
        proc = self.in_host(sys.executable, "-c", code)
        return proc.stdout if proc.returncode == 0 else None

    def our_namespaces(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir("/run/netns") if n.startswith(self.prefix))
        except FileNotFoundError:
            return []


def wait_for(cond: Callable[[], object], timeout: float = 60.0, step: float = 0.3) -> object:
    """Poll `cond` until it returns something truthy (the test fails if it never does)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(step)


@pytest.fixture
def ops_rig(tmp_path, host_netns):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    host, _ = host_netns
    subprocess.run(["ip", "-n", host, "link", "set", "lo", "up"], check=True)
    tag = uuid.uuid4().hex[:5]
    specs = tmp_path / "specs"
    specs.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["CNI_PATH"] = "/usr/lib/cni"
    env["RECONCILER_PLUGIN_SOCKET"] = str(tmp_path / "no-daemon.sock")
    env.pop("RECONCILER_LOG_FORMAT", None)
    env.pop("RECONCILER_LOG_LEVEL", None)
    rig = OpsRig(host=host, prefix=f"rcn-o{tag}-", specs=specs, state=tmp_path / "state",
                 base=f"10.{random.randint(100, 250)}.{random.randint(0, 255)}", bridge=f"rcnob{tag}", env=env)
    yield rig
    for name in rig.our_namespaces():
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
