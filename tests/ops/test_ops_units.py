"""systemd units pass `systemd-analyze verify`; `install-units` is idempotent and stages under --root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.cli.ops_cmd import UNITS_SOURCE, reconciler_command, render_unit

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted(p.name for p in UNITS_SOURCE.iterdir() if p.suffix in (".service", ".socket", ".timer"))

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze missing (Debian package systemd)")


def verify(paths: list[Path]) -> subprocess.CompletedProcess:
    env = dict(os.environ, SYSTEMD_LOG_LEVEL="notice")
    return subprocess.run(["systemd-analyze", "verify", *map(str, paths)], capture_output=True, text=True, env=env)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, env=env)


def test_the_expected_units_exist():
    assert {"reconciler-watch.service", "reconciler-check.service", "reconciler-check.timer",
            "cni-dhcp.service", "cni-dhcp.socket", "reconciler-plugins.service",
            "reconciler-plugins.socket"} <= set(UNITS)
    watch = (UNITS_SOURCE / "reconciler-watch.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in watch
    assert "Restart=on-failure" in watch
    for cap in ("CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN"):
        assert cap in watch
    for family in ("AF_NETLINK", "AF_UNIX", "AF_INET", "AF_INET6", "AF_PACKET"):
        assert family in watch
    # the named namespaces it creates must be visible host-wide: no private mount namespace
    # and no device policy: the tap plugin opens /dev/net/tun
    for option in ("ProtectSystem=", "PrivateTmp=", "ProtectKernelTunables=", "PrivateDevices=", "ProtectClock=",
                   "DeviceAllow=", "DevicePolicy="):
        assert not any(line.startswith(option) for line in watch.splitlines())
    timer = (UNITS_SOURCE / "reconciler-check.timer").read_text()
    assert "Unit=reconciler-check.service" in timer


@needs_analyze
def test_example_units_verify(tmp_path):
    """The templates, with the CLI path filled in, are clean for systemd-analyze (no warnings at all)."""
    cli = reconciler_command()
    out = []
    for name in UNITS:
        path = tmp_path / name
        path.write_text(render_unit((UNITS_SOURCE / name).read_text(), cli.split()[0]))
        out.append(path)
    proc = verify(out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


@needs_analyze
def test_verify_catches_a_broken_unit(tmp_path):
    """Guard for the test above: a unit with an unknown key or a missing binary does not pass silently."""
    bad = tmp_path / "rcn-bad.service"
    bad.write_text("[Service]\nExecStart=/nonexistent/rcn-reconciler watch\nBogusKey=1\n")
    proc = verify([bad])
    assert proc.returncode != 0 or proc.stderr.strip()


@needs_analyze
def test_install_units_idempotent(tmp_path):
    root = tmp_path / "root"
    first = run_cli("install-units", "--root", str(root))
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    units_dir = root / "etc/systemd/system"
    assert sorted(p.name for p in units_dir.iterdir()) == UNITS
    specs = root / "etc/cni-reconciler/specs"
    assert specs.is_dir()
    env_file = root / "etc/cni-reconciler/reconciler.env"
    assert env_file.is_file()
    bin_dir = root / "opt/cni/bin"
    for plugin in ("bridge", "host-local", "portmap", "loopback"):
        assert os.access(bin_dir / plugin, os.X_OK), plugin
    # the installed units run the real CLI and verify as installed
    watch = (units_dir / "reconciler-watch.service").read_text()
    assert "/usr/local/bin/reconciler" not in watch
    assert f"ExecStart={reconciler_command()} watch" in watch
    proc = verify(sorted(units_dir.iterdir()))
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr

    # the operator edits the env file and drops a spec in; a second run changes nothing of theirs
    env_file.write_text("RECONCILER_WATCH_ARGS=--interval 60\n")
    (specs / "mine.conflist").write_text("{}")
    second = run_cli("install-units", "--root", str(root))
    assert second.returncode == 0, second.stderr
    states = {line.split()[0] for line in second.stdout.splitlines() if line and not line.startswith("Next")}
    assert states <= {"unchanged", "kept"}, second.stdout
    assert env_file.read_text() == "RECONCILER_WATCH_ARGS=--interval 60\n"
    assert (specs / "mine.conflist").read_text() == "{}"

    # a unit changed behind our back is put back
    (units_dir / "reconciler-check.timer").write_text("[Timer]\n")
    third = run_cli("install-units", "--root", str(root), "--no-plugins")
    assert f"updated   {units_dir / 'reconciler-check.timer'}" in third.stdout
    assert "OnUnitActiveSec=" in (units_dir / "reconciler-check.timer").read_text()


def test_installed_plugin_answers_version(tmp_path):
    root = tmp_path / "root"
    assert run_cli("install-units", "--root", str(root)).returncode == 0
    proc = subprocess.run([str(root / "opt/cni/bin/bridge")], env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, input="")
    assert proc.returncode == 0, proc.stderr
    assert "1.0.0" in json.loads(proc.stdout)["supportedVersions"]
