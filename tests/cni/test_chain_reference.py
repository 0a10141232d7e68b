"""Our chain runner (and the cnitool equivalent) driving the reference Go plugins.

bridge + host-local + portmap from /usr/lib/cni run through ADD, CHECK and DEL
inside a namespace standing in for the host; the result and the cache file must
be what libcni produces.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run, unique

RECONCILER = [sys.executable, "-m", "reconciler"]


@pytest.fixture
def setup(tmp_path, make_netns, reference_plugins):
    host_name, _ = make_netns("rcn-h-")
    _, ctr = make_netns()
    net = unique("rcnnet")
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    conflist = {
        "cniVersion": "1.0.0",
        "name": net,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "rcnbr0",
                "isGateway": True,
                "ipMasq": True,
                "ipam": {"type": "host-local", "subnet": "10.77.0.0/24", "dataDir": str(tmp_path / "ipam"),
                         "routes": [{"dst": "0.0.0.0/0"}]},
                "x-unknown-field": {"kept": True},
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        ],
    }
    raw = json.dumps(conflist, indent=2).encode()
    (conf_dir / "10-test.conflist").write_bytes(raw)
    # The same network without portmap: v1.1.1's portmap CHECK wrongly demands IPv6 chains.
    plain = dict(conflist, name=net + "-plain", plugins=conflist["plugins"][:1])
    (conf_dir / "20-plain.conflist").write_text(json.dumps(plain))
    env = dict(
        os.environ,
        NETCONFPATH=str(conf_dir),
        CNI_PATH=str(reference_plugins),
        CAP_ARGS=json.dumps({"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}),
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=web",
        CNI_IFNAME="eth0",
    )
    cache = tmp_path / "cache"

    def cnitool(verb: str, network: str = net) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", host_name, *RECONCILER, "cni", verb, network, ctr, "--cache-dir", str(cache),
             "--exec"],
            env=env, capture_output=True, text=True,
        )

    return dict(host=host_name, ctr=ctr, net=net, raw=raw, cache=cache, cnitool=cnitool)


def test_add_check_del_like_libcni(setup) -> None:
    s = setup
    add = s["cnitool"]("add")
    assert add.returncode == 0, add.stdout + add.stderr
    result = json.loads(add.stdout)
    assert result["cniVersion"] == "1.0.0"
    names = [i["name"] for i in result["interfaces"]]
    assert names[0] == "rcnbr0" and names[2] == "eth0"
    assert result["interfaces"][2]["sandbox"] == s["ctr"]
    assert result["ips"][0]["address"].startswith("10.77.0.") and result["ips"][0]["interface"] == 2

    # The cache file, exactly in libcni's layout and format.
    from tests.cni.test_chain_reference import cnitool_id

    cid = cnitool_id(s["ctr"])
    path = s["cache"] / "results" / f"{s['net']}-{cid}-eth0"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    entry = json.loads(path.read_text())
    assert entry["kind"] == "cniCacheV1"
    assert entry["containerId"] == cid and entry["ifName"] == "eth0" and entry["networkName"] == s["net"]
    assert entry["netns"] == s["ctr"]
    assert base64.b64decode(entry["config"]) == s["raw"]  # the list's bytes, untouched
    assert entry["cniArgs"] == [["IgnoreUnknown", "1"], ["K8S_POD_NAME", "web"]]
    assert entry["capabilityArgs"]["portMappings"][0]["hostPort"] == 18080
    assert entry["result"] == result

    # Kernel state in the stand-in host: bridge, and the portmap chains.
    links = run("ip", "-n", s["host"], "-o", "link", "show", "rcnbr0").stdout
    assert "rcnbr0" in links
    rules = run("ip", "netns", "exec", s["host"], "iptables-save", "-t", "nat").stdout
    assert "CNI-HOSTPORT-DNAT" in rules and "--dport 18080" in rules

    for _ in range(2):  # DEL twice is harmless
        dele = s["cnitool"]("del")
        assert dele.returncode == 0, dele.stdout + dele.stderr
    assert not path.exists()
    rules = run("ip", "netns", "exec", s["host"], "iptables-save", "-t", "nat").stdout
    assert "--dport 18080" not in rules
    assert not any(Path(s["cache"]).parent.joinpath("ipam", s["net"]).glob("10.77.*"))


def test_check_then_drift(setup) -> None:
    s = setup
    plain = s["net"] + "-plain"
    assert s["cnitool"]("add", plain).returncode == 0
    check = s["cnitool"]("check", plain)
    assert check.returncode == 0, check.stdout + check.stderr
    run("ip", "-n", Path(s["ctr"]).name, "link", "del", "eth0")
    check = s["cnitool"]("check", plain)
    assert check.returncode == 1
    err = json.loads(check.stdout)
    assert "type='bridge' failed (check)" in err["msg"]
    assert s["cnitool"]("del", plain).returncode == 0


def test_unknown_plugin_type(setup, tmp_path) -> None:
    conf = tmp_path / "net.d" / "20-x.conflist"
    conf.write_text(json.dumps({"cniVersion": "1.0.0", "name": "rcn-nope", "plugins": [{"type": "no-such-plugin"}]}))
    proc = subprocess.run(
        [*RECONCILER, "cni", "add", "rcn-nope", setup["ctr"], "--cache-dir", str(tmp_path / "c")],
        env=dict(os.environ, NETCONFPATH=str(tmp_path / "net.d"), CNI_PATH="/usr/lib/cni"),
        capture_output=True, text=True,
    )
    assert proc.returncode == 1
    err = json.loads(proc.stdout)
    assert "no-such-plugin" in err["msg"] and "failed to find plugin" in err["msg"]


def cnitool_id(netns: str) -> str:
    from reconciler.cli.cni_cmd import container_id_for

    return container_id_for(netns)
