"""The lease daemon's own behaviour: queued releases, timeouts, sockets, vanishing containers."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from tests.conftest import run
from tests.plugins.dhcp.conftest import daemon_request, dhcp_exec, lease_of, netconf, wait_for

pytestmark = pytest.mark.timeout(180)


def test_del_while_daemon_down_is_queued(lan, dnsmasq, dhcp_daemon, plugin_dir):
    server = dnsmasq()
    daemon = dhcp_daemon()
    _, path = lan.container()
    conf = netconf(daemon.socket_path)
    res = dhcp_exec(plugin_dir, "ADD", conf, path)
    assert res.code == 0, res.stdout + res.stderr
    ip = res.json["ips"][0]["address"].split("/")[0]
    assert daemon.stop() == 0

    down = dhcp_exec(plugin_dir, "DEL", conf, path)
    assert down.code == 0, down.stdout + down.stderr  # the reference fails here
    queue = Path(f"{daemon.socket_path}.d") / "releases"
    assert len(list(queue.glob("*.json"))) == 1
    assert lease_of(server, "ctr1") is not None

    dhcp_daemon()
    wait_for(lambda: lease_of(server, "ctr1") is None, 20, "the queued release")
    assert server.count("DHCPRELEASE", ip) == 1
    assert list(queue.glob("*.json")) == []


def test_no_server_fails_within_timeout(lan, dhcp_daemon, plugin_dir):
    daemon = dhcp_daemon()
    _, path = lan.container()
    conf = netconf(daemon.socket_path, timeout=3)
    started = time.monotonic()
    res = dhcp_exec(plugin_dir, "ADD", conf, path)
    elapsed = time.monotonic() - started
    assert res.code == 1 and res.json["code"] == 11, res.stdout
    assert "no DHCP lease for eth0" in res.json["msg"] and "within 3s" in res.json["msg"]
    print(f"no-server ADD failed after {elapsed:.2f}s (timeout 3s)")
    assert elapsed < 3 + 10
    assert daemon_request(daemon.socket_path, {"op": "status"})["leases"] == 0
    assert list((Path(f"{daemon.socket_path}.d") / "leases").glob("*.json")) == []


def test_daemon_not_running(lan, plugin_dir, tmp_path):
    _, path = lan.container()
    sock = str(tmp_path / "nobody.sock")
    res = dhcp_exec(plugin_dir, "ADD", netconf(sock), path)
    assert res.code == 1 and res.json["code"] == 11
    assert (
        f"dhcp daemon not running at {sock}" in res.json["msg"]
        and "dhcp daemon -socketpath" in res.json["msg"]
    )
    status = dhcp_exec(plugin_dir, "STATUS", netconf(sock, version="1.1.0"), "")
    assert status.code == 1 and status.json["code"] == 50
    assert dhcp_exec(plugin_dir, "DEL", netconf(sock), path).code == 0


def test_status_and_live_socket_is_kept(lan, dhcp_daemon, plugin_dir):
    pidfile = lan.tmp / "dhcp.pid"
    daemon = dhcp_daemon(flags=("-pidfile", str(pidfile), "-timeout", "20s"))
    assert dhcp_exec(plugin_dir, "STATUS", netconf(daemon.socket_path, version="1.1.0"), "").code == 0
    assert stat.S_IMODE(os.stat(Path(daemon.socket_path).parent).st_mode) == 0o700
    assert pidfile.read_text().strip().isdigit()
    rival = dhcp_daemon(socket_path=daemon.socket_path, via="cli", wait=False)
    assert rival.proc.wait(20) == 1
    assert "already listening" in rival.log.read_text()
    assert daemon_request(daemon.socket_path, {"op": "status"})["ok"] is True
    assert daemon.stop() == 0
    assert not pidfile.exists() and not os.path.exists(daemon.socket_path)


def test_container_netns_vanishes(lan, dnsmasq, dhcp_daemon, plugin_dir):
    dnsmasq()
    daemon = dhcp_daemon()
    ctr, path = lan.container()
    conf = netconf(daemon.socket_path)
    assert dhcp_exec(plugin_dir, "ADD", conf, path).code == 0
    run("ip", "netns", "delete", ctr)
    lan.containers.remove(ctr)
    wait_for(lambda: "netns vanished" in daemon.log.read_text(), 20, "the daemon to notice")
    assert daemon_request(daemon.socket_path, {"op": "status"})["ok"] is True
    assert dhcp_exec(plugin_dir, "DEL", conf, path).code == 0
    assert daemon.proc.poll() is None


def test_unicast_replies_and_interface_removal(lan, dnsmasq, dhcp_daemon, plugin_dir):
    """broadcast: false (the server answers unicast); the interface deleted under the daemon."""
    server = dnsmasq()
    daemon = dhcp_daemon()
    ctr, path = lan.container()
    conf = netconf(daemon.socket_path, broadcast=False)
    res = dhcp_exec(plugin_dir, "ADD", conf, path)
    assert res.code == 0, res.stdout + res.stderr
    assert lease_of(server, "ctr1")[2] == res.json["ips"][0]["address"].split("/")[0]
    run("ip", "-n", ctr, "link", "delete", "eth0")
    wait_for(lambda: "interface vanished" in daemon.log.read_text(), 20, "the daemon to notice")
    bad = dhcp_exec(plugin_dir, "CHECK", dict(conf, prevResult=res.json), path)
    assert bad.code != 0 and "not being renewed" in bad.json["msg"]
    assert dhcp_exec(plugin_dir, "DEL", conf, path).code == 0
    assert daemon.proc.poll() is None


ACTIVATE = r"""
import os, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
s.listen(16)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
os.execv(sys.argv[2], [sys.argv[2], "daemon", "-socketpath", path])
"""


def test_systemd_socket_activation(lan, plugin_dir, tmp_path):
    import subprocess
    import sys

    sock = str(tmp_path / "activated.sock")
    log = tmp_path / "activated.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                lan.host_ns,
                sys.executable,
                "-c",
                ACTIVATE,
                sock,
                str(plugin_dir / "dhcp"),
            ],
            stdout=fh,
            stderr=fh,
        )
    try:
        reply = wait_for(lambda: daemon_request(sock, {"op": "status"}), 20, "the activated daemon")
        assert reply["ok"] is True and reply["pid"] == proc.pid
    finally:
        proc.terminate()
        assert proc.wait(20) == 0, log.read_text()
    assert os.path.exists(sock)  # systemd owns an activated socket: the daemon leaves it
