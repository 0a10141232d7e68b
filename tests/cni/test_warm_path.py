"""The warm path: launcher -> daemon gives byte-identical answers, in the caller's namespace."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.cni import wire
from reconciler.cni.registry import implemented
from tests.cnitest import exec_plugin

pytestmark = pytest.mark.skipif("loopback" not in implemented(), reason="loopback plugin not built yet")
CONF = {"cniVersion": "1.0.0", "name": "rcn-warm", "type": "loopback"}


@pytest.fixture
def daemon(tmp_path):
    sock = tmp_path / "run" / "plugin.sock"
    proc = subprocess.Popen([sys.executable, "-m", "reconciler", "serve", "--socket", str(sock)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not sock.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "daemon did not start"
        time.sleep(0.05)
    yield sock, proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)


def run_both(plugin_dir: Path, sock: Path, command: str, config, **kw):
    warm = exec_plugin(plugin_dir / "loopback", command, config,
                       extra_env={"RECONCILER_PLUGIN_SOCKET": str(sock)}, **kw)
    cold = exec_plugin(plugin_dir / "loopback", command, config,
                       extra_env={"RECONCILER_PLUGIN_SOCKET": str(sock), "RECONCILER_NO_WARM": "1"}, **kw)
    return warm, cold


def test_socket_is_owner_only(daemon) -> None:
    sock, _ = daemon
    assert sock.stat().st_mode & 0o777 == 0o600
    assert sock.parent.stat().st_mode & 0o777 == 0o700


def test_identical_results_and_errors(daemon, plugin_dir, netns) -> None:
    sock, _ = daemon
    for command, config, kw in [
        ("ADD", CONF, {"netns": netns, "ifname": "lo"}),
        ("CHECK", dict(CONF, prevResult={"cniVersion": "1.0.0"}), {"netns": netns, "ifname": "lo"}),
        ("DEL", CONF, {"netns": netns, "ifname": "lo"}),
        ("ADD", b"{broken", {"netns": netns}),
        ("ADD", dict(CONF, cniVersion="9.9.9"), {"netns": netns}),
        ("ADD", CONF, {"netns": "/run/netns/rcn-missing"}),
        ("ADD", CONF, {"netns": netns, "container_id": "bad id"}),
    ]:
        warm, cold = run_both(plugin_dir, sock, command, config, **kw)
        assert (warm.code, warm.stdout) == (cold.code, cold.stdout), (command, config)


def test_daemon_works_in_the_callers_namespace(daemon, plugin_dir, make_netns) -> None:
    """A caller in another netns gets its own namespace's view: loopback ADD with a relative CNI_NETNS
    is resolved by the daemon in the caller's namespace (here: lo of the caller's netns is brought up)."""
    sock, _ = daemon
    host, _ = make_netns("rcn-h-")
    subprocess.run(["ip", "-n", host, "link", "set", "lo", "down"], check=True)
    res = exec_plugin(plugin_dir / "loopback", "ADD", CONF, netns="/proc/self/ns/net", ifname="lo",
                      netns_exec=host, extra_env={"RECONCILER_PLUGIN_SOCKET": str(sock), "CNI_NETNS_OVERRIDE": "1"})
    assert res.code == 0, res.stdout + res.stderr
    state = subprocess.run(["ip", "-n", host, "-o", "link", "show", "lo"], capture_output=True, text=True).stdout
    assert "UP" in state


def test_del_works_with_daemon_down(plugin_dir, netns, tmp_path) -> None:
    res = exec_plugin(plugin_dir / "loopback", "DEL", CONF, netns=netns, ifname="lo",
                      extra_env={"RECONCILER_PLUGIN_SOCKET": str(tmp_path / "nobody-home.sock")})
    assert res.code == 0 and res.stdout == ""


def test_malformed_and_oversized_requests_are_refused(daemon, plugin_dir, netns) -> None:
    sock, proc = daemon
    for payload in [b"GARBAGE!", b"RCN1" + struct.pack("!I", 3), b"RCN1" + struct.pack("!I", 2) + struct.pack("!I", 2**31)]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(sock))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        code, out = wire.read_reply(s)
        s.close()
        assert code == 1 and b'"code": 6' in out
    assert proc.poll() is None  # still serving
    warm, cold = run_both(plugin_dir, sock, "ADD", CONF, netns=netns, ifname="lo")
    assert warm.code == 0 and warm.stdout == cold.stdout


def test_stale_socket_replaced_live_one_refused(tmp_path, daemon) -> None:
    sock, _ = daemon
    second = subprocess.run([sys.executable, "-m", "reconciler", "serve", "--socket", str(sock)],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 1 and "already serving" in second.stdout
    stale = tmp_path / "stale" / "plugin.sock"
    stale.parent.mkdir()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on, as a killed daemon leaves
    from reconciler.cni.server import bind

    fresh = bind(str(stale))
    assert os.stat(stale).st_mode & 0o777 == 0o600
    fresh.close()
