"""Every shipped spec directory loads cleanly, converges on the real kernel, checks clean and prunes to nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.engine.specs import load_specs

ROOT = Path(__file__).resolve().parents[2]
DIRS = sorted(p for p in (ROOT / "examples").iterdir() if p.is_dir() and list(p.glob("*.toml"))) + [ROOT / "specs"]


@pytest.mark.parametrize("spec_dir", DIRS, ids=lambda p: p.name)
def test_example_loads_cleanly(spec_dir):
    specs = load_specs(spec_dir)
    assert not specs.errors, [str(e) for e in specs.errors]
    assert specs.attachments
    assert (spec_dir / "README.md").exists() or spec_dir.name == "specs"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("spec_dir", DIRS, ids=lambda p: p.name)
def test_example_converges_and_prunes(spec_dir, rig):
    specs_copy = rig.specs / spec_dir.name
    shutil.copytree(spec_dir, specs_copy)
    rig.specs = specs_copy
    names = sorted({a.netns for a in load_specs(spec_dir).attachments.values()})
    assert all(n.startswith("rcn-") for n in names)
    leftovers = [n for n in names if os.path.exists(f"/run/netns/{n}")]
    if leftovers:
        pytest.skip(f"namespaces {leftovers} already exist (another run of this test?)")
    if spec_dir.name == "macvlan":
        subprocess.run(["ip", "-n", rig.host, "link", "add", "rcnexuplink0", "type", "veth", "peer", "name",
                        "rcnexuplink1"], check=True)
        subprocess.run(["ip", "-n", rig.host, "link", "set", "rcnexuplink0", "up"], check=True)
    try:
        out = rig.run("apply")
        assert out.returncode == 0, out.stdout + out.stderr
        check = rig.run("check")
        assert check.returncode == 0, check.stdout + check.stderr
        assert rig.run("plan").returncode == 0
        if spec_dir.name == "static-ips":
            assert rig.addrs("rcn-ex-st-dns") == ["10.232.4.53/24"]
            assert rig.addrs("rcn-ex-st-web") == ["10.232.4.80/24"]
        if spec_dir.name == "dual-stack":
            assert [a.split("/")[1] for a in rig.addrs("rcn-ex-ds-one")] == ["24", "64"]
        if spec_dir.name == "multi-network":
            assert len(rig.addrs("rcn-ex-mn-app", "net1")) == 1
        for path in specs_copy.glob("*.toml"):
            path.unlink()
        out = rig.run("apply")
        assert out.returncode == 0, out.stdout + out.stderr
        assert not [n for n in names if os.path.exists(f"/run/netns/{n}")]
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "delete", n], capture_output=True)
