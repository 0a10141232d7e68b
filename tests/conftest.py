"""Shared fixtures: real network namespaces, installed plugin executables, the reference oracle.

Every kernel object a test makes carries the `rcn` prefix and is removed in a
fixture finaliser, even when the test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.cnitest import REFERENCE_DIR

# Exec'd plugins forward to a warm daemon when its socket exists: tests opt in explicitly, so a daemon
# left on this machine (or started by another test) never changes what a cold plugin run means.
os.environ.setdefault("RECONCILER_PLUGIN_SOCKET", "/run/rcn-tests-no-daemon/plugin.sock")
ROOT = os.geteuid() == 0


def run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def wait_until(pred, timeout: float = 60.0, step: float = 0.2) -> bool:
    """Poll `pred` until it holds or `timeout` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def unique(prefix: str = "rcn") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_netns():
    """Factory: make_netns() -> (name, path). Deleted at teardown."""
    if not ROOT:
        pytest.skip("needs root for network namespaces")
    made: list[str] = []

    def _make(prefix: str = "rcn-t-") -> tuple[str, str]:
        name = unique(prefix)
        run("ip", "netns", "add", name)
        made.append(name)
        return name, f"/run/netns/{name}"

    yield _make
    for name in made:
        run("ip", "netns", "delete", name, check=False)


@pytest.fixture
def netns(make_netns):
    """One fresh namespace path."""
    return make_netns()[1]


@pytest.fixture
def host_netns(make_netns):
    """A namespace standing in for the host: tests run plugins inside it so the real host is untouched."""
    return make_netns("rcn-h-")


@pytest.fixture(scope="session")
def reference_plugins() -> Path:
    if not (REFERENCE_DIR / "bridge").exists():
        pytest.skip("reference plugins (containernetworking-plugins) not installed")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory) -> Path:
    """Our plugins installed as executables (the same launcher `reconciler plugins install` writes)."""
    from reconciler.launcher import install

    target = tmp_path_factory.mktemp("cni-bin")
    install(target)
    return target


@pytest.fixture
def ip_in():
    """ip_in(netns_name, *args): run `ip` inside a namespace."""

    def _ip(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ip", "-n", ns, *args, check=check)

    return _ip


def have(binary: str) -> bool:
    return shutil.which(binary) is not None
