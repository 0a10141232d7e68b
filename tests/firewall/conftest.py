"""Helpers for firewall tests: dumps of a namespace's tables, foreign rules to plant."""

from __future__ import annotations

import subprocess

import pytest


def sh(ns: str, *cmd: str, check: bool = True) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} in {ns}: {proc.stderr}")
    return proc.stdout


def legacy_rules(ns: str, table: str = "nat", family: int = 4) -> list[str]:
    """`iptables-legacy-save` of one table, rule and chain lines only, counters dropped."""
    tool = "iptables-legacy-save" if family == 4 else "ip6tables-legacy-save"
    out = sh(ns, tool, "-t", table)
    lines = []
    for line in out.splitlines():
        if line.startswith((":", "-A")):
            lines.append(line.split(" [")[0] if line.startswith(":") else line)
    return lines


def nft_table(ns: str, family: str, name: str) -> str:
    return sh(ns, "nft", "list", "table", family, name, check=False)


@pytest.fixture
def hostns(host_netns) -> str:
    """The name of a namespace standing in for the host (its tables start empty)."""
    return host_netns[0]
