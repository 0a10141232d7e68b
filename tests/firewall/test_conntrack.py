"""Conntrack UDP flush by original destination port, done from outside the namespace."""

from __future__ import annotations

from reconciler.kernel import conntrack
from tests.firewall.conftest import sh

SEND = "import socket,sys; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', int(sys.argv[1])))"


def entries(ns: str, port: int) -> int:
    return sh(ns, "conntrack", "-L", "-p", "udp", check=False).count(f"dport={port} ")


def test_flush_only_the_given_ports(hostns: str) -> None:
    sh(hostns, "ip", "link", "set", "lo", "up")
    sh(hostns, "iptables-legacy", "-A", "INPUT", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT")
    for port in (5399, 5400):
        sh(hostns, "python3", "-c", SEND, str(port))
    assert entries(hostns, 5399) == 1 and entries(hostns, 5400) == 1
    assert conntrack.flush_udp_dports([5399], 4, hostns) == 1
    assert entries(hostns, 5399) == 0 and entries(hostns, 5400) == 1
    assert conntrack.flush_udp_dports([5399], 4, hostns) == 0  # nothing left: fine
    assert conntrack.flush_udp_dports([], 6, hostns) == 0
