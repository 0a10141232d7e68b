"""A small physical network with a real DHCP server (dnsmasq) and our lease daemon.

[rcn-n-* "the LAN"]  rcnsrv (10.77.0.1/24, dnsmasq)
        | veth
[rcn-h-* "the host"] rcnup (macvlan master, no address)  -- the dhcp daemon runs here
        | macvlan (bridge mode), one per container
[rcn-t-* containers]  eth0
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.cnitest import PluginRun, exec_plugin
from tests.conftest import run

SERVER_IP = "10.77.0.1"
ROOT = Path(__file__).resolve().parents[3]


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> object:
    """Poll until predicate() is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


@dataclass
class Dnsmasq:
    proc: subprocess.Popen
    leasefile: Path
    logfile: Path
    pidfile: Path | None = None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def leases(self) -> list[list[str]]:
        try:
            return [line.split() for line in self.leasefile.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            return []

    def log(self) -> str:
        try:
            return self.logfile.read_text()
        except FileNotFoundError:
            return ""

    def count(self, word: str, ip: str = "") -> int:
        return sum(1 for line in self.log().splitlines() if word in line and ip in line)


@dataclass
class Lan:
    net_ns: str
    host_ns: str
    master: str
    tmp: Path
    containers: list[str] = field(default_factory=list)

    def container(self) -> tuple[str, str]:
        """A new container netns with `eth0`, a macvlan on the LAN. Returns (name, path)."""
        name = f"rcn-t-{uuid.uuid4().hex[:8]}"
        run("ip", "netns", "add", name)
        self.containers.append(name)
        tmp_link = f"rcnmv{uuid.uuid4().hex[:6]}"
        run(
            "ip",
            "-n",
            self.host_ns,
            "link",
            "add",
            "link",
            self.master,
            "name",
            tmp_link,
            "type",
            "macvlan",
            "mode",
            "bridge",
        )
        run("ip", "-n", self.host_ns, "link", "set", tmp_link, "netns", name)
        run("ip", "-n", name, "link", "set", tmp_link, "name", "eth0")
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name, f"/run/netns/{name}"


@pytest.fixture
def lan(make_netns, tmp_path):
    if not shutil.which("dnsmasq"):
        pytest.skip("dnsmasq (Debian dnsmasq-base) not installed")
    net_ns, _ = make_netns("rcn-n-")
    host_ns, _ = make_netns("rcn-h-")
    srv, up = "rcnsrv0", "rcnup0"
    run("ip", "link", "add", srv, "netns", net_ns, "type", "veth", "peer", "name", up, "netns", host_ns)
    run("ip", "-n", net_ns, "addr", "add", f"{SERVER_IP}/24", "dev", srv)
    run("ip", "-n", net_ns, "link", "set", srv, "up")
    run("ip", "-n", net_ns, "link", "set", "lo", "up")
    run("ip", "-n", host_ns, "link", "set", up, "up")
    lan = Lan(net_ns=net_ns, host_ns=host_ns, master=up, tmp=tmp_path)
    yield lan
    for name in lan.containers:
        run("ip", "netns", "delete", name, check=False)


@pytest.fixture
def dnsmasq(lan):
    """start(*extra_options) -> Dnsmasq serving 10.77.0.50-150 (2 min leases) on the LAN."""
    procs: list[subprocess.Popen] = []

    def start(*extra: str, lease: str = "2m", pool: str = "10.77.0.50,10.77.0.150") -> Dnsmasq:
        leasefile = lan.tmp / f"dnsmasq{len(procs)}.leases"
        logfile = lan.tmp / f"dnsmasq{len(procs)}.log"
        cmd = [
            "ip",
            "netns",
            "exec",
            lan.net_ns,
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=rcnsrv0",
            "--bind-interfaces",
            "--user=root",
            "--no-ping",
            "--dhcp-authoritative",
            f"--dhcp-range={pool},255.255.255.0,{lease}",
            f"--dhcp-option=option:router,{SERVER_IP}",
            f"--dhcp-leasefile={leasefile}",
            f"--pid-file={lan.tmp / 'dnsmasq.pid'}",
            "--log-dhcp",
            f"--log-facility={logfile}",
            *extra,
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        server = Dnsmasq(proc, leasefile, logfile)
        server.pidfile = lan.tmp / "dnsmasq.pid"
        wait_for(
            lambda: "DHCP, sockets bound" in server.log() or proc.poll() is not None, 10, "dnsmasq to start"
        )
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "dnsmasq exited"
        return server

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class DaemonHandle:
    proc: subprocess.Popen
    socket_path: str
    log: Path

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(20)


@pytest.fixture
def dhcp_daemon(lan, plugin_dir):
    """start(socket_path=None, via="plugin"|"cli", *flags) -> DaemonHandle, running in the LAN's host netns."""
    handles: list[DaemonHandle] = []
    default_socket = str(lan.tmp / "run" / "dhcp.sock")

    def start(
        socket_path: str | None = None, via: str = "plugin", flags: tuple[str, ...] = (), wait: bool = True
    ) -> DaemonHandle:
        path = socket_path or default_socket
        if via == "plugin":
            cmd = [str(plugin_dir / "dhcp"), "daemon", "-socketpath", path, *flags]
        else:
            cmd = [sys.executable, "-m", "reconciler", "dhcp", "daemon", "--socket-path", path, *flags]
        log = lan.tmp / f"daemon-{len(handles)}.log"
        env = dict(os.environ, RECONCILER_LOG_LEVEL="DEBUG", PYTHONPATH=str(ROOT))
        with log.open("w") as fh:
            proc = subprocess.Popen(["ip", "netns", "exec", lan.host_ns, *cmd], stdout=fh, stderr=fh, env=env)
        handle = DaemonHandle(proc, path, log)
        handles.append(handle)
        if wait:
            wait_for(
                lambda: daemon_request(path, {"op": "status"}) is not None or proc.poll() is not None,
                20,
                "the dhcp daemon to listen",
            )
        return handle

    yield start
    for handle in handles:
        if handle.proc.poll() is None:
            handle.proc.terminate()
            try:
                handle.proc.wait(20)
            except subprocess.TimeoutExpired:
                handle.proc.kill()


def daemon_request(path: str, request: dict | bytes, timeout: float = 30) -> dict | None:
    """One raw request to the daemon; None if nothing listens."""
    body = request if isinstance(request, bytes) else json.dumps(request).encode()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    try:
        sock.sendall(struct.pack("!I", len(body)) + body if not isinstance(request, bytes) else body)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return json.loads(data[4:]) if len(data) >= 4 else {}
    finally:
        sock.close()


PING = r"""
import os, socket, struct, sys, time
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
ident = os.getpid() & 0xFFFF
pkt = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"rcn-ping"
pkt = pkt[:2] + struct.pack("!H", csum(pkt)) + pkt[4:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(1)
end = time.monotonic() + float(sys.argv[2])
s.sendto(pkt, (sys.argv[1], 0))
while time.monotonic() < end:
    try:
        data, addr = s.recvfrom(2048)
    except socket.timeout:
        s.sendto(pkt, (sys.argv[1], 0)); continue
    icmp = data[(data[0] & 0x0F) * 4:]
    if addr[0] == sys.argv[1] and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
        sys.exit(0)
sys.exit(1)
"""


def ping(netns: str, address: str, timeout: float = 5) -> bool:
    """ICMP echo from inside `netns` (the image has no ping binary)."""
    proc = run("ip", "netns", "exec", netns, sys.executable, "-c", PING, address, str(timeout), check=False)
    return proc.returncode == 0


def netconf(socket_path: str, version: str = "1.0.0", **ipam: object) -> dict:
    return {
        "cniVersion": version,
        "name": "rcn-dhcp-net",
        "type": "macvlan",
        "master": "rcnup0",
        "ipam": {"type": "dhcp", "daemonSocketPath": socket_path, **ipam},
    }


def dhcp_exec(
    plugin_dir: Path, command: str, conf: dict, netns: str, cid: str = "ctr1", **kw: object
) -> PluginRun:
    """Exec our installed dhcp plugin as a runtime would."""
    return exec_plugin(
        plugin_dir / "dhcp",
        command,
        conf,
        netns=netns,
        container_id=cid,
        cni_path=f"{plugin_dir}:/usr/lib/cni",
        **kw,
    )


def client_hex(cid: str) -> str:
    """dnsmasq's rendering of our client identifier (type 0 + '<cid>/<network>/eth0')."""
    raw = b"\x00" + f"{cid}/rcn-dhcp-net/eth0".encode()
    return ":".join(f"{b:02x}" for b in raw)


def lease_of(server: Dnsmasq, cid: str) -> list[str] | None:
    """The dnsmasq lease-file line of our client `cid`, if any."""
    for line in server.leases():
        if len(line) >= 5 and line[4] == client_hex(cid):
            return line
    return None


def configure(ctr: str, result: dict) -> None:
    """What the main plugin does with the IPAM result: the address on eth0, link up."""
    run("ip", "-n", ctr, "addr", "add", result["ips"][0]["address"], "dev", "eth0")
    run("ip", "-n", ctr, "link", "set", "eth0", "up")
