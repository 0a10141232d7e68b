"""sbr, ours vs the reference, chained after the reference ptp + host-local.

Compare the container's policy rules and every routing table after ADD and
after DEL, with interface names normalised.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cnitest import exec_plugin
from tests.conftest import run, unique

pytestmark = pytest.mark.timeout(120)

NET = "rcnsbr"
CTR = "rcnctr-sbr1"
V4 = [{"subnet": "10.96.0.0/24"}]
V6 = [{"subnet": "fd00:96::/64"}]


class Attachment:
    def __init__(self, host: str, ctr_path: str, prev: dict[str, Any], ptp: dict[str, Any]):
        self.host, self.ctr_path, self.prev, self.ptp = host, ctr_path, prev, ptp
        self.ctr = Path(ctr_path).name
        self.last: dict[str, Any] = {}

    def conf(self, version: str = "1.0.0", prev: dict | None = None, **fields: Any) -> dict[str, Any]:
        return {"cniVersion": version, "name": NET, "type": "sbr", **fields, "prevResult": prev or self.prev}

    def run(self, binary: Path, verb: str, conf: dict[str, Any], **kw: Any):
        kw.setdefault("netns", self.ctr_path)
        return exec_plugin(binary, verb, conf, container_id=CTR, netns_exec=self.host, **kw)

    def state(self) -> dict[str, list]:
        """Rules and routes of every table (link-local/multicast/local-table noise dropped)."""
        out: dict[str, list] = {}
        for fam in ("-4", "-6"):
            rules = json.loads(run("ip", fam, "-n", self.ctr, "-j", "rule", "show").stdout or "[]")
            out[f"rules{fam}"] = sorted(json.dumps(r, sort_keys=True) for r in rules)
            routes = json.loads(run("ip", fam, "-n", self.ctr, "-j", "route", "show", "table", "all").stdout or "[]")
            keep = []
            for r in routes:
                if r.get("table") == "local" or r.get("dst", "").startswith(("ff00", "multicast")):
                    continue
                r.pop("expires", None)
                keep.append(json.dumps(r, sort_keys=True))
            out[f"routes{fam}"] = sorted(keep)
        return out


@pytest.fixture
def attach(make_netns, reference_plugins, tmp_path):
    made: list[Attachment] = []

    def _make(ranges: list | None = None, version: str = "1.0.0") -> Attachment:
        host, _ = make_netns("rcn-h-")
        _, ctr_path = make_netns()
        ptp = {"cniVersion": version, "name": NET, "type": "ptp",
               "ipam": {"type": "host-local", "ranges": [[r] for r in (ranges or V4)],
                        "routes": [{"dst": "0.0.0.0/0"}] + ([{"dst": "::/0"}] if ranges and V6[0] in ranges else []),
                        "dataDir": str(tmp_path / unique("ipam"))}}
        res = exec_plugin(reference_plugins / "ptp", "ADD", ptp, netns=ctr_path, container_id=CTR,
                          netns_exec=host, cni_path=reference_plugins)
        assert res.code == 0, res.stdout + res.stderr
        att = Attachment(host, ctr_path, res.json, ptp)
        made.append(att)
        return att

    yield _make
    for att in made:
        exec_plugin(reference_plugins / "ptp", "DEL", att.ptp, netns=att.ctr_path, container_id=CTR,
                    netns_exec=att.host, cni_path=reference_plugins)


def normalise(result: dict, att: Attachment) -> dict:
    out = json.loads(json.dumps(result))
    if not out.get("dns"):
        out.pop("dns", None)
    for iface in out.get("interfaces", []):
        iface["mac"] = "MAC"
        iface["sandbox"] = "CTR" if iface.get("sandbox") else None
        if not iface["sandbox"]:
            iface["name"] = "HOSTVETH"
    return out


@pytest.mark.parametrize("ranges", [V4, V4 + V6], ids=["v4", "dual"])
@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_differential(attach, reference_plugins, plugin_dir, version, ranges):
    ref, ours = attach(ranges, version), attach(ranges, version)
    assert ref.state() == ours.state()
    results = {}
    for name, att, binary in (("ref", ref, reference_plugins / "sbr"), ("ours", ours, plugin_dir / "sbr")):
        res = att.run(binary, "ADD", att.conf(version))
        assert res.code == 0, f"{name}: {res.stdout} {res.stderr}"
        att.last = res.json
        results[name] = normalise(res.json, att)
    assert results["ours"] == results["ref"]
    after = ours.state()
    assert after == ref.state()
    assert any("lookup" in r or '"table": "100"' in r or '"table": 100' in r for r in after["rules-4"])

    assert ours.run(plugin_dir / "sbr", "CHECK", ours.conf(version, prev=ours.last)).code == 0
    for att, binary in ((ref, reference_plugins / "sbr"), (ours, plugin_dir / "sbr")):
        for _ in range(2):
            res = att.run(binary, "DEL", att.conf(version, prev=att.last))
            assert res.code == 0, res.stdout + res.stderr
    ref_rules = {k: v for k, v in ref.state().items() if k.startswith("rules")}
    our_rules = {k: v for k, v in ours.state().items() if k.startswith("rules")}
    assert our_rules == ref_rules
    assert not any("100" in r for r in our_rules["rules-4"])


def test_table_option_adds_rules_only(attach, plugin_dir):
    att = attach(V4 + V6)
    before = att.state()
    res = att.run(plugin_dir / "sbr", "ADD", att.conf(table=500))
    assert res.code == 0, res.stdout
    after = att.state()
    assert {k: v for k, v in after.items() if k.startswith("routes")} == \
        {k: v for k, v in before.items() if k.startswith("routes")}
    ip4 = att.prev["ips"][0]["address"].split("/")[0]
    rules = run("ip", "-n", att.ctr, "rule", "show").stdout
    assert f"from {ip4} lookup 500" in rules
    assert "lookup 500" in run("ip", "-6", "-n", att.ctr, "rule", "show").stdout
    assert att.run(plugin_dir / "sbr", "CHECK", att.conf(table=500, prev=res.json)).code == 0
    assert att.run(plugin_dir / "sbr", "DEL", att.conf(table=500, prev=res.json)).code == 0
    assert att.state() == before


def test_second_attachment_takes_next_table_and_check_detects_drift(attach, plugin_dir):
    att = attach()
    run("ip", "-n", att.ctr, "rule", "add", "from", "10.250.0.1", "lookup", "100")  # foreign rule owns 100
    res = att.run(plugin_dir / "sbr", "ADD", att.conf())
    assert res.code == 0, res.stdout
    ip4 = att.prev["ips"][0]["address"].split("/")[0]
    assert f"from {ip4} lookup 101" in run("ip", "-n", att.ctr, "rule", "show").stdout
    assert "default via" in run("ip", "-n", att.ctr, "route", "show", "table", "101").stdout
    run("ip", "-n", att.ctr, "route", "flush", "table", "101")
    bad = att.run(plugin_dir / "sbr", "CHECK", att.conf(prev=res.json))
    assert bad.code != 0 and "101" in bad.json["msg"]
    assert att.run(plugin_dir / "sbr", "DEL", att.conf(prev=res.json)).code == 0
    rules = run("ip", "-n", att.ctr, "rule", "show").stdout
    assert "from 10.250.0.1 lookup 100" in rules and "lookup 101" not in rules  # foreign rule survives


def test_source_routing_sends_traffic_via_table(attach, plugin_dir):
    """After ADD the container still reaches its gateway: traffic from its address uses the new table."""
    att = attach()
    assert att.run(plugin_dir / "sbr", "ADD", att.conf()).code == 0
    gw = att.prev["ips"][0]["gateway"]
    ip4 = att.prev["ips"][0]["address"].split("/")[0]
    got = run("ip", "-n", att.ctr, "route", "get", "10.1.2.3", "from", ip4).stdout
    assert "table 100" in got and f"via {gw}" in got
    # the main table lost the interface routes: traffic sourced from the address goes through table 100
    server = subprocess.Popen(["ip", "netns", "exec", att.host, sys.executable, "-c", LISTENER, gw],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        run("ip", "netns", "exec", att.ctr, sys.executable, "-c", CONNECT, gw, ip4, timeout=30)
        assert server.stdout.readline().strip() == f"from {ip4}"
    finally:
        server.kill()
        server.wait()


LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 15301)); s.listen(1); print("ready", flush=True)
c, peer = s.accept(); print("from", peer[0], flush=True)
"""
CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], 15301), timeout=10, source_address=(sys.argv[2], 0))"


def test_errors(attach, plugin_dir, reference_plugins):
    att = attach()
    conf = att.conf()
    conf.pop("prevResult")
    res = att.run(plugin_dir / "sbr", "ADD", conf)
    assert res.json["code"] == 7 and "prevResult" in res.json["msg"]
    res = att.run(plugin_dir / "sbr", "ADD", att.conf(table=254))
    assert res.json["code"] == 7 and "table" in res.json["msg"]
    # an interface without addresses: an error, as the reference's (nothing is written)
    bare = att.conf()
    bare["prevResult"] = {**bare["prevResult"], "ips": []}
    for binary in (plugin_dir / "sbr", reference_plugins / "sbr"):
        res = att.run(binary, "ADD", bare)
        assert res.code == 1 and "no ip addresses supplied on interface" in res.json["msg"].lower(), res.stdout
    # DEL with the netns gone is fine
    assert att.run(plugin_dir / "sbr", "DEL", att.conf(), netns="/run/netns/rcn-gone").code == 0
