"""Our DEL/GC remove what the reference plugins wrote into the iptables-nft tables.

On this host `iptables` is the nft variant, so the reference bridge (ipMasq) and
portmap write their chains into nftables' `ip nat` through the xtables compat
layer. In a namespace standing in for the host: reference ADD, then our DEL (or
GC with no valid attachment) must leave no chain or rule of that attachment in
iptables-nft or iptables-legacy, create no legacy table, and keep a foreign rule.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reconciler.kernel.firewall.base import hash_name
from tests.cnitest import exec_plugin
from tests.conftest import run, unique

pytestmark = pytest.mark.skipif(shutil.which("iptables-nft-save") is None, reason="iptables-nft not installed")
MAPPING = {"hostPort": 18181, "containerPort": 80, "protocol": "tcp"}
FOREIGN = "RCN-FOREIGN"


def save(host: str, tool: str) -> str:
    return run("ip", "netns", "exec", host, tool).stdout


def legacy_tables(host: str) -> str:
    out = ""
    for name in ("ip_tables_names", "ip6_tables_names"):
        path = run("ip", "netns", "exec", host, "sh", "-c", f"cat /proc/net/{name} 2>/dev/null || true").stdout
        out += path
    return out.strip()


@pytest.fixture
def attached(tmp_path, make_netns, reference_plugins):
    """Reference bridge (ipMasq) + portmap ADD in a stand-in host; a foreign rule planted first."""
    host, _ = make_netns("rcn-h-")
    _, ctr = make_netns()
    net, cid = unique("rcnxt"), unique("rcnctr")
    run("ip", "netns", "exec", host, "iptables-nft", "-t", "nat", "-N", FOREIGN)
    run("ip", "netns", "exec", host, "iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-s", "10.78.9.9",
        "-m", "comment", "--comment", f'name: "{net}" id: "foreign"', "-j", FOREIGN)
    bridge = {"cniVersion": "1.0.0", "name": net, "type": "bridge", "bridge": "rcnxbr0", "isGateway": True,
              "ipMasq": True, "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                                       "ranges": [[{"subnet": "10.78.0.0/24"}], [{"subnet": "fd00:78::/64"}]]}}
    add = exec_plugin(reference_plugins / "bridge", "ADD", bridge, netns=ctr, container_id=cid,
                      cni_path=reference_plugins, netns_exec=host)
    assert add.code == 0, add.stderr + add.stdout
    portmap = {"cniVersion": "1.0.0", "name": net, "type": "portmap", "snat": True,
               "runtimeConfig": {"portMappings": [MAPPING]}, "prevResult": add.json}
    pm = exec_plugin(reference_plugins / "portmap", "ADD", portmap, netns=ctr, container_id=cid,
                     cni_path=reference_plugins, netns_exec=host)
    assert pm.code == 0, pm.stderr + pm.stdout
    masq = hash_name("CNI-", net + cid, 28)
    dn = hash_name("CNI-DN-", net + cid, 28)
    rules = save(host, "iptables-nft-save")
    assert f":{masq}" in rules and f"-j {masq}" in rules, rules
    assert f":{dn}" in rules and f"-j {dn}" in rules and "18181" in rules, rules
    rules6 = save(host, "ip6tables-nft-save")
    assert f"-j {masq}" in rules6 and f"-j {dn}" in rules6, rules6
    assert legacy_tables(host) == ""
    return dict(host=host, ctr=ctr, net=net, cid=cid, bridge=bridge, portmap=portmap, chains=(masq, dn),
                tmp=tmp_path)


def assert_clean(s: dict) -> None:
    host = s["host"]
    assert legacy_tables(host) == "", "teardown created legacy tables"
    nft = save(host, "iptables-nft-save")
    for text in (nft, save(host, "ip6tables-nft-save")):
        for chain in s["chains"]:
            assert chain not in text, text
        assert "18181" not in text and f'id: \\"{s["cid"]}\\"' not in text, text
    assert "-A POSTROUTING -s 10.78.9.9/32" in nft and f":{FOREIGN}" in nft, nft  # foreign rule survives
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save"):
        legacy = save(host, tool)
        assert "CNI-" not in legacy, legacy


def test_our_del_removes_reference_rules(attached, plugin_dir: Path) -> None:
    s = attached
    for _ in range(2):  # DEL twice is harmless
        pm = exec_plugin(plugin_dir / "portmap", "DEL", s["portmap"], netns=s["ctr"], container_id=s["cid"],
                         netns_exec=s["host"])
        assert pm.code == 0, pm.stderr + pm.stdout
        br = exec_plugin(plugin_dir / "bridge", "DEL", s["bridge"], netns=s["ctr"], container_id=s["cid"],
                         netns_exec=s["host"])
        assert br.code == 0, br.stderr + br.stdout
    assert_clean(s)


def test_our_gc_removes_reference_rules(attached, plugin_dir: Path) -> None:
    s = attached
    valid = {"cni.dev/valid-attachments": []}
    for plugin, conf in (("portmap", s["portmap"]), ("bridge", s["bridge"])):
        gc_conf = {**conf, **valid, "cniVersion": "1.1.0"}
        gc_conf.pop("prevResult", None)
        done = exec_plugin(plugin_dir / plugin, "GC", gc_conf, container_id="", netns_exec=s["host"])
        assert done.code == 0, done.stderr + done.stdout
    nft = save(s["host"], "iptables-nft-save")
    assert f"-j {FOREIGN}" in nft  # commented for this network but not reference-shaped: kept
    assert_clean(s)


def test_our_firewall_del_removes_reference_forward_rules(attached, reference_plugins, plugin_dir: Path) -> None:
    s = attached
    host = s["host"]
    conf = {"cniVersion": "1.0.0", "name": s["net"], "type": "firewall", "backend": "iptables",
            "prevResult": s["portmap"]["prevResult"]}
    add = exec_plugin(reference_plugins / "firewall", "ADD", conf, netns=s["ctr"], container_id=s["cid"],
                      cni_path=reference_plugins, netns_exec=host)
    assert add.code == 0, add.stderr + add.stdout
    # a foreign ACCEPT for another address in CNI-FORWARD must survive
    run("ip", "netns", "exec", host, "iptables-nft", "-A", "CNI-FORWARD", "-s", "10.78.9.9", "-j", "ACCEPT")
    ip = s["portmap"]["prevResult"]["ips"][0]["address"].split("/")[0]
    ip6 = next(i["address"].split("/")[0] for i in s["portmap"]["prevResult"]["ips"] if ":" in i["address"])
    assert f"-A CNI-FORWARD -s {ip6}/128" in save(host, "ip6tables-nft-save")
    before = save(host, "iptables-nft-save")
    assert f"-A CNI-FORWARD -s {ip}/32" in before and f"-A CNI-FORWARD -d {ip}/32" in before, before
    for _ in range(2):
        done = exec_plugin(plugin_dir / "firewall", "DEL", conf, netns=s["ctr"], container_id=s["cid"],
                           netns_exec=host)
        assert done.code == 0, done.stderr + done.stdout
    after = save(host, "iptables-nft-save")
    assert f"{ip}/32" not in after.split("*filter", 1)[1].split("COMMIT", 1)[0], after
    assert "-A CNI-FORWARD -s 10.78.9.9/32 -j ACCEPT" in after, after
    after6 = save(host, "ip6tables-nft-save")
    assert f"{ip6}/128" not in after6.split("*filter", 1)[1].split("COMMIT", 1)[0], after6
    assert legacy_tables(host) == ""
