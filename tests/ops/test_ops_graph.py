"""`reconciler graph` on a known specs directory: every namespace, bridge and address is named; drift is red."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from reconciler.engine.graph import RED


@pytest.fixture
def applied(ops_rig):
    known = ops_rig.write_specs()
    proc = ops_rig.run("apply")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return ops_rig, known


def test_dot_names_every_namespace_bridge_and_address(applied):
    rig, known = applied
    proc = rig.run("graph")
    assert proc.returncode == 0, proc.stderr
    dot = proc.stdout
    assert dot.startswith("digraph reconciler {")
    for ns in known["namespaces"]:
        assert f"netns {ns}" in dot
        for addr in rig.addrs(ns):
            assert addr in dot, addr
    for bridge in known["bridges"]:
        assert f'"host/{bridge}"' in dot
        for addr in rig.host_addrs(bridge):
            assert addr in dot
    assert dot.count('label="veth"') == 3  # one pair per attachment
    assert dot.count('label="port"') >= 3  # host ends enslaved to the bridge
    assert "net.conflist" in dot and "apps.toml" in dot  # which file owns what
    assert "DNAT" in dot  # the port mapping of the first attachment
    assert RED not in dot  # nothing drifted


def test_drift_is_red(applied):
    rig, _ = applied
    a, b = rig.ns("a"), rig.ns("b")
    subprocess.run(["ip", "-n", a, "link", "del", "eth0"], check=True)
    subprocess.run(["ip", "-n", b, "addr", "flush", "dev", "eth0"], check=True)
    dot = rig.run("graph").stdout
    missing = next(line for line in dot.splitlines() if f'"{a}/eth0" [' in line)
    assert "MISSING" in missing and RED in missing
    drifted = next(line for line in dot.splitlines() if f'"{b}/eth0" [' in line)
    assert RED in drifted
    assert f"DRIFT: interface eth0 missing in netns {a}" in dot
    assert "DRIFT: address" in dot


def test_broken_spec_file_is_red(applied):
    rig, _ = applied
    (rig.specs / "broken.toml").write_text("[[attachment]\n")
    dot = rig.run("graph").stdout
    line = next(line for line in dot.splitlines() if "broken.toml" in line and "FAILED TO LOAD" in line)
    assert RED in line


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz missing (Debian package graphviz)")
def test_svg_and_png_render(applied, tmp_path):
    rig, known = applied
    svg = tmp_path / "host.svg"
    proc = rig.run("graph", "--format", "svg", "--output", str(svg))
    assert proc.returncode == 0, proc.stderr
    tree = ET.parse(svg)
    assert tree.getroot().tag.endswith("svg")
    text = " ".join(t.text or "" for t in tree.iter() if t.tag.endswith("text"))
    for ns in known["namespaces"]:
        assert ns in text
    png = tmp_path / "host.png"
    assert rig.run("graph", "--format", "png", "-o", str(png)).returncode == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_graph_all_and_no_check(applied):
    rig, known = applied
    proc = rig.run("graph", "--all", "--no-check")
    assert proc.returncode == 0, proc.stderr
    assert '"host/lo"' in proc.stdout  # --all: every host link, not only ours
    for ns in known["namespaces"]:
        assert f"netns {ns}" in proc.stdout


def test_graph_with_nothing_applied(ops_rig):
    proc = ops_rig.run("graph")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("digraph reconciler {") and proc.stdout.rstrip().endswith("}")
