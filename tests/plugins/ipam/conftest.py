"""Fixtures for IPAM tests: no root, no netns; everything lives in tmp dirs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cnitest import PluginRun, exec_plugin
from tests.plugins.ipam.ipamtest import REF_HOST_LOCAL


@pytest.fixture
def fake_netns(tmp_path: Path) -> str:
    """An existing path for CNI_NETNS (IPAM never enters it; skel requires it to exist)."""
    path = tmp_path / "netns"
    path.touch()
    return str(path)


@pytest.fixture(scope="session")
def ours_bin(plugin_dir: Path) -> Path:
    return plugin_dir / "host-local"


@pytest.fixture(scope="session")
def ref_bin() -> Path:
    if not REF_HOST_LOCAL.exists():
        pytest.skip("reference host-local not installed")
    return REF_HOST_LOCAL


@pytest.fixture
def run_bin(fake_netns: str) -> Callable[..., PluginRun]:
    """run_bin(binary, verb, conf, cid=, ifname=, cni_args=) -> PluginRun."""

    def _run(
        binary: Path,
        verb: str,
        conf: dict[str, Any],
        cid: str = "ctr1",
        ifname: str = "eth0",
        cni_args: str = "",
        env: dict[str, str] | None = None,
    ) -> PluginRun:
        return exec_plugin(
            binary,
            verb,
            conf,
            netns=fake_netns,
            ifname=ifname,
            container_id=cid,
            cni_args=cni_args,
            extra_env=env or {"RECONCILER_PLUGIN_SOCKET": os.devnull},
        )

    return _run
