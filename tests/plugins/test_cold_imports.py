"""What a cold exec'd plugin imports before it knows it needs more (import time is its start-up cost)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = """
import sys
import reconciler.plugins.main.bridge, reconciler.plugins.meta.portmap, reconciler.plugins.meta.firewall
import reconciler.kernel.firewall.masquerade, reconciler.kernel.firewall.portmap, reconciler.kernel.firewall.filter
print(" ".join(sorted(m for m in ("subprocess", "shutil", "pyroute2") if m in sys.modules)))
"""


@pytest.mark.parametrize("unwanted", ["subprocess", "shutil", "pyroute2"])
def test_plugin_and_firewall_modules_import_no_exec_or_pyroute2_machinery(unwanted: str) -> None:
    """subprocess/shutil (~11 ms) only when a tool is exec'd (iptables-nft, a delegated plugin);
    pyroute2 (~150 ms) only for conntrack."""
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True).stdout.split()
    assert unwanted not in out
