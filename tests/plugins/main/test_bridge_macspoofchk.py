"""bridge macspoofchk: the reference's nftables bridge-family layout, enforced on traffic, removed on DEL."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run
from tests.plugins.main.maintest import REFERENCE, World, ping


@pytest.fixture
def world(make_netns, plugin_dir, tmp_path) -> World:
    host, _ = make_netns("rcn-h-")
    return World(host, make_netns, tmp_path / "ipam", f"{plugin_dir}:{REFERENCE}")


def conf(w: World) -> dict:
    return {"cniVersion": "1.0.0", "name": w.net, "type": "bridge", "bridge": "rcnbr0", "isGateway": True,
            "macspoofchk": True, "ipam": {"type": "host-local", "subnet": "10.81.0.0/24", "dataDir": str(w.data_dir)}}


def bridge_nat(host: str) -> list:
    proc = subprocess.run(["ip", "netns", "exec", host, "nft", "-j", "list", "table", "bridge", "nat"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return []
    text = re.sub(r"veth[0-9a-f]{8}", "vethX", proc.stdout)
    items = [next(iter(i.items())) for i in json.loads(text)["nftables"] if "metainfo" not in i]
    out = []
    for kind, body in items:
        body = {k: v for k, v in body.items() if k != "handle"}
        out.append((kind, json.dumps(body, sort_keys=True)))
    return out


def test_layout_matches_reference_and_del_removes_it(world, make_netns, reference_plugins, tmp_path):
    ref_host, _ = make_netns("rcn-h-")
    ref = World(ref_host, make_netns, tmp_path / "ipam-ref", str(REFERENCE), net=world.net)
    layouts = []
    for w, binary in ((world, Path(world.cni_path.split(":")[0]) / "bridge"), (ref, REFERENCE / "bridge")):
        _, ns = w.container()
        r = w.run(binary, "ADD", conf(w), ns, container_id="spoofy", cni_args="IgnoreUnknown=1;MAC=0a:58:0a:51:00:05")
        assert r.code == 0, f"{binary}: {r.stdout}{r.stderr}"
        layouts.append(bridge_nat(w.host))
        assert w.run(binary, "DEL", {**conf(w), "prevResult": r.json}, ns, container_id="spoofy").code == 0
        left = [x for x in bridge_nat(w.host) if x[0] == "rule" or "cni-br-iface" in x[1]]
        assert left == [], f"{binary} left {left}"
    assert layouts[0] == layouts[1]


def test_spoofed_source_mac_is_dropped(world):
    cname, ns = world.container()
    r = world.run(Path(world.cni_path.split(":")[0]) / "bridge", "ADD", conf(world), ns)
    assert r.code == 0, r.stdout + r.stderr
    assert ping(cname, "10.81.0.1")
    chk = world.run(Path(world.cni_path.split(":")[0]) / "bridge", "CHECK", {**conf(world), "prevResult": r.json}, ns)
    assert chk.code == 0, chk.stdout
    run("ip", "-n", cname, "link", "set", "eth0", "address", "0a:58:0a:51:00:66")
    run("ip", "-n", world.host, "neigh", "flush", "all")
    assert not ping(cname, "10.81.0.1", attempts=3)


def test_gc_removes_rules_of_invalid_and_dead_attachments(world):
    ours = Path(world.cni_path.split(":")[0]) / "bridge"
    c = dict(conf(world), cniVersion="1.1.0")
    spaces = {cid: world.container() for cid in ("keep", "drop", "dead")}
    for cid, (_, ns) in spaces.items():
        assert world.run(ours, "ADD", c, ns, container_id=cid).code == 0
    run("ip", "netns", "delete", spaces["dead"][0])  # its veth goes with it; rules stay behind

    def refs() -> set[str]:
        return {json.loads(body)["comment"].removeprefix("macspoofchk-") for kind, body in bridge_nat(world.host)
                if kind == "rule" and json.loads(body)["chain"] == "PREROUTING"}

    assert refs() == {"keep-eth0", "drop-eth0", "dead-eth0"}
    gc = world.run(ours, "GC", {**c, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}, "")
    assert gc.code == 0, gc.stdout + gc.stderr
    assert refs() == {"keep-eth0"}
