"""tuning, ours vs the reference, chained after the reference ptp + host-local.

Each attachment has its own host/container namespace pair; the tuning plugins
only touch the container namespace. Backups go to a per-test dataDir.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.cnitest import exec_plugin
from tests.conftest import run, unique

pytestmark = pytest.mark.timeout(120)

NET = "rcntun"
CTR = "rcnctr-tun1"
SYSCTLS = {"net.ipv4.conf.IFNAME.arp_filter": "1", "net.core.somaxconn": "777"}
LITERAL = {k.replace("IFNAME", "eth0"): v for k, v in SYSCTLS.items()}  # v1.1.1's CHECK does not expand IFNAME
LINK = {"mac": "c2:11:22:33:44:55", "mtu": 1400, "promisc": True, "allmulti": True}


class Attachment:
    def __init__(self, host: str, ctr_path: str, prev: dict[str, Any], ptp: dict[str, Any], data_dir: Path):
        self.host, self.ctr_path, self.prev, self.ptp, self.data_dir = host, ctr_path, prev, ptp, data_dir
        self.ctr = Path(ctr_path).name

    def conf(self, version: str = "1.0.0", prev: dict | None = None, **fields: Any) -> dict[str, Any]:
        return {"cniVersion": version, "name": NET, "type": "tuning", "dataDir": str(self.data_dir),
                **fields, "prevResult": prev or self.prev}

    def run(self, binary: Path, verb: str, conf: dict[str, Any], **kw: Any):
        kw.setdefault("netns", self.ctr_path)
        return exec_plugin(binary, verb, conf, container_id=CTR, netns_exec=self.host, **kw)

    def link(self) -> dict[str, Any]:
        info = json.loads(run("ip", "-n", self.ctr, "-j", "-d", "link", "show", "eth0").stdout)[0]
        return {"mac": info["address"], "mtu": info["mtu"], "promisc": "PROMISC" in info["flags"],
                "allmulti": "ALLMULTI" in info["flags"], "txqlen": info.get("txqlen", 0)}

    def sysctl(self, key: str) -> str:
        return run("ip", "netns", "exec", self.ctr, "sysctl", "-n", key).stdout.strip()

    def sysctls(self) -> dict[str, str]:
        return {k: self.sysctl(k.replace("IFNAME", "eth0")) for k in SYSCTLS}

    @property
    def backup(self) -> Path:
        return self.data_dir / f"{CTR}_eth0.json"


@pytest.fixture
def attach(make_netns, reference_plugins, tmp_path):
    made: list[Attachment] = []

    def _make(version: str = "1.0.0") -> Attachment:
        host, _ = make_netns("rcn-h-")
        _, ctr_path = make_netns()
        ptp = {"cniVersion": version, "name": NET, "type": "ptp",
               "ipam": {"type": "host-local", "subnet": "10.97.0.0/24", "dataDir": str(tmp_path / unique("ipam"))}}
        res = exec_plugin(reference_plugins / "ptp", "ADD", ptp, netns=ctr_path, container_id=CTR,
                          netns_exec=host, cni_path=reference_plugins)
        assert res.code == 0, res.stdout + res.stderr
        att = Attachment(host, ctr_path, res.json, ptp, tmp_path / unique("tuning"))
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
        if iface.get("sandbox") == att.ctr_path:
            iface["sandbox"] = "CTR"
        else:
            iface["name"], iface["mac"] = "HOSTVETH", "MAC"
    return out


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_differential(attach, reference_plugins, plugin_dir, version):
    ref, ours = attach(version), attach(version)
    original = {"ref": (ref.link(), ref.sysctls()), "ours": (ours.link(), ours.sysctls())}
    results = {}
    for name, att, binary in (("ref", ref, reference_plugins / "tuning"), ("ours", ours, plugin_dir / "tuning")):
        res = att.run(binary, "ADD", att.conf(version, sysctl=LITERAL, **LINK))
        assert res.code == 0, f"{name}: {res.stdout} {res.stderr}"
        att.last = res.json
        results[name] = normalise(res.json, att)
    assert results["ours"] == results["ref"]
    assert ours.sysctls() == ref.sysctls() == {k: v for k, v in SYSCTLS.items()}
    assert ours.link() == ref.link()
    assert ours.link()["mac"] == LINK["mac"] and ours.link()["promisc"] and ours.link()["allmulti"]

    if version != "0.3.1":
        for att in (ref, ours):
            for binary in (reference_plugins / "tuning", plugin_dir / "tuning"):
                chk = att.run(binary, "CHECK", att.conf(version, prev=att.last, sysctl=LITERAL, **LINK))
                assert chk.code == 0, f"{binary} CHECK: {chk.stdout} {chk.stderr}"

    for att, binary in ((ref, reference_plugins / "tuning"), (ours, plugin_dir / "tuning")):
        for _ in range(2):
            res = att.run(binary, "DEL", att.conf(version, sysctl=LITERAL, **LINK))
            assert res.code == 0, res.stdout + res.stderr
        assert not att.backup.exists()
    # both restore link attributes; only ours restores sysctls (the reference leaves them changed)
    assert ref.link() == original["ref"][0]
    assert ours.link() == original["ours"][0]
    assert ours.sysctls() == original["ours"][1]
    assert ref.sysctls() == SYSCTLS


def test_backups_are_interchangeable(attach, reference_plugins, plugin_dir):
    """Each implementation restores link attributes from the other's backup file."""
    for maker, deleter in ((reference_plugins, plugin_dir), (plugin_dir, reference_plugins)):
        att = attach()
        before = att.link()
        assert att.run(maker / "tuning", "ADD", att.conf(**LINK)).code == 0
        assert att.backup.exists()
        assert att.run(deleter / "tuning", "DEL", att.conf(**LINK)).code == 0
        assert att.link() == before, f"{deleter} restoring {maker}'s backup"


def test_backup_content_and_add_twice(attach, plugin_dir):
    att = attach()
    before_link, before_sys = att.link(), att.sysctls()
    conf = att.conf(sysctl=SYSCTLS, txQLen=3000, **LINK)
    assert att.run(plugin_dir / "tuning", "ADD", conf).code == 0
    assert att.run(plugin_dir / "tuning", "ADD", conf).code == 0  # must keep the first originals
    data = json.loads(att.backup.read_text())
    assert oct(att.backup.stat().st_mode & 0o777) == "0o600"
    assert data["mac"] == before_link["mac"] and data["mtu"] == before_link["mtu"]
    assert data["promisc"] is False and data["allmulti"] is False and data["txQLen"] == before_link["txqlen"]
    assert data["sysctl"] == {"net/ipv4/conf/eth0/arp_filter": before_sys["net.ipv4.conf.IFNAME.arp_filter"],
                              "net/core/somaxconn": before_sys["net.core.somaxconn"]}
    assert att.link()["txqlen"] == 3000
    assert att.run(plugin_dir / "tuning", "DEL", conf).code == 0
    assert att.link() == before_link and att.sysctls() == before_sys


def test_check_detects_drift(attach, plugin_dir):
    att = attach()
    conf = att.conf(sysctl=SYSCTLS, **LINK)
    res = att.run(plugin_dir / "tuning", "ADD", conf)
    assert res.code == 0
    conf["prevResult"] = res.json
    assert att.run(plugin_dir / "tuning", "CHECK", conf).code == 0
    run("ip", "netns", "exec", att.ctr, "sysctl", "-w", "net.core.somaxconn=100")
    bad = att.run(plugin_dir / "tuning", "CHECK", conf)
    assert bad.code != 0 and "somaxconn" in bad.json["msg"]
    run("ip", "netns", "exec", att.ctr, "sysctl", "-w", "net.core.somaxconn=777")
    run("ip", "-n", att.ctr, "link", "set", "eth0", "mtu", "1300")
    bad = att.run(plugin_dir / "tuning", "CHECK", conf)
    assert bad.code != 0 and "mtu" in bad.json["msg"]


def test_mac_sources_and_precedence(attach, plugin_dir):
    att = attach()
    conf = att.conf(mac="c2:00:00:00:00:01")
    conf["runtimeConfig"] = {"mac": "c2:00:00:00:00:02"}
    res = att.run(plugin_dir / "tuning", "ADD", conf, cni_args="IgnoreUnknown=1;MAC=c2:00:00:00:00:03")
    assert res.code == 0, res.stdout
    assert att.link()["mac"] == "c2:00:00:00:00:02"  # capability beats CNI_ARGS beats config
    eth0 = next(i for i in res.json["interfaces"] if i.get("sandbox"))
    assert eth0["mac"] == "c2:00:00:00:00:02"
    conf["args"] = {"cni": {"mac": "c2:00:00:00:00:04", "mtu": 1280, "sysctl": {"net.core.somaxconn": "555"}}}
    assert att.run(plugin_dir / "tuning", "ADD", conf).code == 0
    assert att.link()["mac"] == "c2:00:00:00:00:04" and att.link()["mtu"] == 1280
    assert att.sysctl("net.core.somaxconn") == "555"


def test_del_without_netns_drops_backup(attach, plugin_dir):
    att = attach()
    assert att.run(plugin_dir / "tuning", "ADD", att.conf(**LINK)).code == 0
    res = att.run(plugin_dir / "tuning", "DEL", att.conf(**LINK), netns="")
    assert res.code == 0 and not att.backup.exists()


def test_gc_removes_only_this_networks_stale_backups(attach, plugin_dir):
    att = attach()
    assert att.run(plugin_dir / "tuning", "ADD", att.conf(**LINK)).code == 0
    foreign = att.data_dir / "other_eth0.json"
    foreign.write_text(json.dumps({"mac": "c2:00:00:00:00:09"}))  # a reference backup: no owner recorded
    gc = {"cniVersion": "1.1.0", "name": NET, "type": "tuning", "dataDir": str(att.data_dir),
          "cni.dev/valid-attachments": [{"containerID": CTR, "ifname": "eth0"}]}
    assert exec_plugin(plugin_dir / "tuning", "GC", gc).code == 0
    assert att.backup.exists()
    gc["cni.dev/valid-attachments"] = []
    assert exec_plugin(plugin_dir / "tuning", "GC", dict(gc, name="rcnother")).code == 0
    assert att.backup.exists()
    assert exec_plugin(plugin_dir / "tuning", "GC", gc).code == 0
    assert not att.backup.exists() and foreign.exists()


@pytest.mark.parametrize(
    "fields, word",
    [
        ({"sysctl": {"kernel.hostname": "x"}}, "net.*"),
        ({"sysctl": {"net/core/somaxconn": "1"}}, "'/'"),
        ({"sysctl": {"net.core..somaxconn": "1"}}, ".."),
        ({"sysctl": {"net.ipv4.conf.eth0.arp_filter": "1", "net.ipv4.conf.IFNAME.arp_filter": "1"}}, "duplicate"),
        ({"sysctl": {"net.core.somaxconn": "1", "net.ipv4.conf.all.forwarding/../../../kernel/x": "1"}}, "'/'"),
        ({"sysctl": {"net.core.no_such_sysctl": "1"}}, "no such sysctl"),
        ({"sysctl": {"net.core.somaxconn": ["1"]}}, "somaxconn"),
        ({"mac": "zz:11:22:33:44:55"}, "mac"),
        ({"mac": "01:00:5e:00:00:01"}, "multicast"),
        ({"mtu": -5}, "mtu"),
        ({"txQLen": -1}, "txQLen"),
        ({"args": {"cni": {"mtu": "big"}}}, "args.cni.mtu"),
    ],
)
def test_bad_inputs_write_nothing(attach, plugin_dir, fields, word):
    att = attach()
    before = (att.link(), att.sysctls())
    fields = dict(fields)
    fields.setdefault("sysctl", {})
    fields["sysctl"] = {"net.core.somaxconn": "999", **fields["sysctl"]}  # a valid key that must not be written
    res = att.run(plugin_dir / "tuning", "ADD", att.conf(**fields))
    assert res.json and res.json["code"] == 7, res.stdout + res.stderr
    assert word in res.json["msg"], res.json["msg"]
    assert (att.link(), att.sysctls()) == before
    assert not att.backup.exists()


def test_allowlist(attach, plugin_dir, tmp_path):
    allow = tmp_path / "allowlist.conf"
    allow.write_text("^net\\.core\\.somaxconn$\n\n")
    att = attach()
    env = {"RECONCILER_TUNING_ALLOWLIST": str(allow)}
    ok = att.run(plugin_dir / "tuning", "ADD", att.conf(sysctl={"net.core.somaxconn": "321"}), extra_env=env)
    assert ok.code == 0, ok.stdout
    bad = att.run(plugin_dir / "tuning", "ADD", att.conf(sysctl={"net.ipv4.conf.IFNAME.arp_filter": "1"}),
                  extra_env=env)
    assert bad.json["code"] == 7 and "allowlist" in bad.json["msg"]
    assert att.sysctl("net.ipv4.conf.eth0.arp_filter") == "0"


def test_no_prev_result_is_an_error(attach, plugin_dir):
    att = attach()
    conf = att.conf(**LINK)
    conf.pop("prevResult")
    res = att.run(plugin_dir / "tuning", "ADD", conf)
    assert res.json["code"] == 7 and "prevResult" in res.json["msg"]


def test_host_is_untouched(attach, plugin_dir):
    """The sysctls are written in the container's namespace, never in the one the plugin runs in."""
    att = attach()
    host_value = run("ip", "netns", "exec", att.host, "sysctl", "-n", "net.core.somaxconn").stdout.strip()
    assert att.run(plugin_dir / "tuning", "ADD", att.conf(sysctl={"net.core.somaxconn": "1234"})).code == 0
    assert att.sysctl("net.core.somaxconn") == "1234"
    assert run("ip", "netns", "exec", att.host, "sysctl", "-n", "net.core.somaxconn").stdout.strip() == host_value
    assert os.path.exists(att.backup)
