"""Fixtures for the engine tests: a namespace standing in for the host, a specs dir, a state dir.

The reconciler runs as a real process (`python -m reconciler ...`) entered into
the stand-in host namespace with `nsenter --net`, so bridges and firewall
chains land there and vanish with it; the attachment namespaces it creates
carry a per-test `rcn` prefix and are deleted at teardown even on failure.
Set RECONCILER_TEST_EXEC=1 to drive the reference Go plugins (exec'd from
/usr/lib/cni) instead of ours.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def toml_value(v: object) -> str:
    """A TOML value for the small shapes the tests write (inline tables, arrays, scalars)."""
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)


@dataclass
class Rig:
    host: str
    prefix: str
    specs: Path
    state: Path
    subnet_base: str  # "10.A.B"
    bridge: str
    env: dict[str, str] = field(default_factory=dict)

    def cmd(self, *args: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.host}", sys.executable, "-m", "reconciler", *args]

    def run(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        extra = list(args)
        if args and args[0] in ("plan", "apply", "check", "gc", "status", "watch"):
            extra += ["--specs", str(self.specs), "--state", str(self.state)]
        return subprocess.run(self.cmd(*extra), capture_output=True, text=True, env=self.env, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen:
        extra = [*args, "--specs", str(self.specs), "--state", str(self.state)]
        return subprocess.Popen(self.cmd(*extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)

    def ns(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def network(self, name: str = "net1", bridge: str | None = None, subnet: str | None = None,
                portmap: bool = False, extra: dict | None = None, v6: str | None = None) -> Path:
        ranges = [[{"subnet": subnet or f"{self.subnet_base}.0/24"}]]
        if v6:
            ranges.append([{"subnet": v6}])
        main = {"type": "bridge", "bridge": bridge or self.bridge, "isGateway": True, "ipMasq": False,
                "ipam": {"type": "host-local", "ranges": ranges}}
        main.update(extra or {})
        plugins = [main]
        if portmap:
            plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
        path = self.specs / f"{name}.conflist"
        path.write_text(json.dumps({"cniVersion": "1.0.0", "name": name, "plugins": plugins}, indent=1))
        return path

    def attachments(self, items: list[dict], file: str = "attachments.toml") -> Path:
        lines = []
        for item in items:
            lines.append("[[attachment]]")
            caps = item.get("capabilities")
            for k, v in item.items():
                if k != "capabilities":
                    lines.append(f"{k} = {toml_value(v)}")
            if caps:
                lines.append("[attachment.capabilities]")
                lines += [f"{k} = {toml_value(v)}" for k, v in caps.items()]
            lines.append("")
        path = self.specs / file
        path.write_text("\n".join(lines))
        return path

    def addrs(self, ns: str, ifname: str = "eth0") -> list[str]:
        out = subprocess.run(["ip", "-j", "-n", ns, "addr", "show", "dev", ifname], capture_output=True, text=True)
        if out.returncode != 0:
            return []
        data = json.loads(out.stdout or "[]")
        return sorted(f"{a['local']}/{a['prefixlen']}" for d in data for a in d.get("addr_info", [])
                      if a.get("scope") == "global")

    def host_links(self, kind: str | None = None) -> list[str]:
        args = ["ip", "-j", "-n", self.host, "-d", "link", "show"]
        data = json.loads(subprocess.run(args, capture_output=True, text=True).stdout or "[]")
        return [d["ifname"] for d in data if kind is None or d.get("linkinfo", {}).get("info_kind") == kind]

    def our_namespaces(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir("/run/netns") if n.startswith(self.prefix))
        except FileNotFoundError:
            return []

    def allocations(self, network: str = "net1") -> list[str]:
        d = self.state / "networks" / network
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if p.name[0].isdigit() or ":" in p.name)


@pytest.fixture
def rig(tmp_path, host_netns):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    host, _path = host_netns
    subprocess.run(["ip", "-n", host, "link", "set", "lo", "up"], check=True)
    tag = uuid.uuid4().hex[:5]
    specs = tmp_path / "specs"
    specs.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["CNI_PATH"] = "/usr/lib/cni"
    env["RECONCILER_REPAIR_BACKOFF"] = "10"
    if os.environ.get("RECONCILER_TEST_EXEC") == "1":
        env["RECONCILER_EXEC_MODE"] = "1"
    r = Rig(
        host=host,
        prefix=f"rcn-e{tag}-",
        specs=specs,
        state=tmp_path / "state",
        subnet_base=f"10.{random.randint(100, 250)}.{random.randint(0, 255)}",
        bridge=f"rcnb{tag}",
        env=env,
    )
    yield r
    for name in r.our_namespaces():
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
