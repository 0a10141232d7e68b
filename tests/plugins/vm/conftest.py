"""Fixtures for the kernel-feature plugin tests (ipvlan, vlan, dummy, host-device, tap).

Tests marked `kernelvm` need link kinds this host's kernel may lack. `need_kind(kind)`
probes the running kernel by creating one such link in a scratch namespace (which also
triggers module autoloading), and skips with the reason when it cannot; inside the
virtme-ng VM job (tests/vm/run.sh) the full Debian kernel has them all.
"""

from __future__ import annotations

import subprocess

import pytest
from kernelkinds import kind_unavailable
from linktest import Env


@pytest.fixture
def need_kind():
    """need_kind('ipvlan'): skip this test when the running kernel lacks the link kind."""

    def _need(kind: str) -> None:
        reason = kind_unavailable(kind)
        if reason:
            pytest.skip(reason)

    return _need


@pytest.fixture
def env(host_netns, make_netns, tmp_path, plugin_dir) -> Env:
    """A host stand-in namespace (lo up), a private IPAM dataDir and our installed plugins."""
    host, _ = host_netns
    subprocess.run(["ip", "-n", host, "link", "set", "lo", "up"], check=True)
    return Env(host=host, make_netns=make_netns, tmp=tmp_path, ours=plugin_dir)


@pytest.fixture
def parent(env: Env) -> str:
    """A veth end named rcnpar0 in the host namespace, up, MTU 1500 (peer rcnpar1 also up): the master
    for ipvlan/vlan tests."""
    subprocess.run(["ip", "-n", env.host, "link", "add", "rcnpar0", "type", "veth", "peer", "name", "rcnpar1"],
                   check=True)
    for name in ("rcnpar0", "rcnpar1"):
        subprocess.run(["ip", "-n", env.host, "link", "set", name, "up"], check=True)
    return "rcnpar0"
