"""The GitOps walkthrough (docs/gitops.md) end to end: a specs repo, pull to the host, CI plan gate,
a bad commit that removes nothing, and a rollback by revert."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

GIT_ENV = {"GIT_AUTHOR_NAME": "rcn", "GIT_AUTHOR_EMAIL": "rcn@example.invalid",
           "GIT_COMMITTER_NAME": "rcn", "GIT_COMMITTER_EMAIL": "rcn@example.invalid"}


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **GIT_ENV})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def repo(ops_rig, tmp_path):
    """origin (bare), dev (a reviewer's clone) and the host's specs directory as a clone of origin."""
    origin, dev = tmp_path / "origin.git", tmp_path / "dev"
    git(tmp_path, "init", "--bare", str(origin))
    git(tmp_path, "clone", str(origin), str(dev))
    host_specs = ops_rig.specs
    ops_rig.specs = dev  # write_specs writes into the dev clone
    ops_rig.write_specs()
    ops_rig.specs = host_specs
    git(dev, "add", "-A")
    git(dev, "commit", "-qm", "demo network and three apps")
    git(dev, "push", "-q", "origin", "HEAD:main")
    host_specs.rmdir()
    git(tmp_path, "clone", "-q", "--branch", "main", str(origin), str(host_specs))
    return dev


def ci_plan(rig, checkout: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """The CI gate: plan the merge request's checkout against an empty state."""
    empty = tmp_path / f"ci-state-{os.urandom(3).hex()}"
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "plan", "--specs", str(checkout),
         "--state", str(empty)], capture_output=True, text=True, env=rig.env)


def test_gitops_walkthrough(ops_rig, repo, tmp_path):
    rig, dev = ops_rig, repo
    # the host converges to the branch
    proc = rig.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    before = {n: rig.addrs(rig.ns(n)) for n in "abc"}
    assert all(before.values())

    # CI: a valid change plans with exit 2 and names the file
    with (dev / "apps.toml").open("a") as fh:
        fh.write(f'\n[[attachment]]\nid = "{rig.prefix}d"\nnetwork = "{rig.network}"\nnetns = "{rig.ns("d")}"\n')
    gate = ci_plan(rig, dev, tmp_path)
    assert gate.returncode == 2, gate.stdout + gate.stderr
    assert f"{rig.prefix}d" in gate.stdout and "apps.toml" in gate.stdout
    git(dev, "commit", "-qam", "add app d")
    git(dev, "push", "-q", "origin", "HEAD:main")
    git(rig.specs, "pull", "-q", "--ff-only")
    assert rig.run("apply").returncode == 0
    assert rig.addrs(rig.ns("d"))

    # a bad commit: CI says 1 and names the file; if it lands anyway, nothing running is removed
    good = (dev / "apps.toml").read_text()
    (dev / "apps.toml").write_text(good.replace("[[attachment]]", "[[attachment]", 1))
    gate = ci_plan(rig, dev, tmp_path)
    assert gate.returncode == 1, gate.stdout + gate.stderr
    assert "apps.toml" in gate.stdout + gate.stderr
    git(dev, "commit", "-qam", "oops")
    git(dev, "push", "-q", "origin", "HEAD:main")
    git(rig.specs, "pull", "-q", "--ff-only")
    proc = rig.run("apply")
    assert proc.returncode == 3, proc.stdout + proc.stderr  # partial: the broken file is reported
    assert "apps.toml" in proc.stdout
    for n in "abc":
        assert rig.addrs(rig.ns(n)) == before[n], n  # untouched, same addresses
    assert rig.addrs(rig.ns("d"))
    status = rig.run("status")
    assert status.stdout.count("kept") >= 4, status.stdout

    # roll back by reverting both commits: d goes away, the rest stays as it was
    git(dev, "revert", "--no-edit", "HEAD", "HEAD~1")
    git(dev, "push", "-q", "origin", "HEAD:main")
    git(rig.specs, "pull", "-q", "--ff-only")
    proc = rig.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"delete {rig.network}/{rig.prefix}d/eth0: ok" in proc.stdout
    assert rig.ns("d") not in rig.our_namespaces()
    for n in "abc":
        assert rig.addrs(rig.ns(n)) == before[n]
    assert rig.run("plan").returncode == 0
    assert rig.run("check", "--quiet").returncode == 0
