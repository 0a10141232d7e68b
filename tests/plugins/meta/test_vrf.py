"""vrf, ours vs the reference, chained after the reference ptp + host-local.

This host's kernel has no VRF: the kernel tests are marked `kernelvm`, skip here
with the reason, and run for real in the virtme-ng VM job (tests/vm/run.sh).
Config validation needs no kernel support and runs everywhere.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.cnitest import exec_plugin, run_plugin
from tests.conftest import run, unique

pytestmark = pytest.mark.timeout(1800)  # generous: the VM job runs under emulation (no KVM)
EXEC_TIMEOUT = 600

NET = "rcnvrf"
CTR = "rcnctr-vrf1"


@functools.cache
def vrf_unavailable() -> str | None:
    ns = f"rcn-probe-{uuid.uuid4().hex[:6]}"
    if run("ip", "netns", "add", ns, check=False).returncode != 0:
        return "cannot create a network namespace"
    try:
        res = run("ip", "-n", ns, "link", "add", "rcnvrfprobe", "type", "vrf", "table", "7", check=False)
        if res.returncode != 0:
            kernel = run("uname", "-r").stdout.strip()
            return f"kernel {kernel} lacks vrf links ({res.stderr.strip()}); runs in tests/vm/run.sh"
        return None
    finally:
        run("ip", "netns", "delete", ns, check=False)


@pytest.fixture
def need_vrf() -> None:
    reason = vrf_unavailable()
    if reason:
        pytest.skip(reason)


class Ctr:
    """A container namespace with reference ptp attachments on eth0, eth1, ..."""

    def __init__(self, host: str, path: str) -> None:
        self.host, self.path = host, path
        self.name = Path(path).name
        self.prev: dict[str, dict[str, Any]] = {}

    def conf(self, ifname: str = "eth0", version: str = "1.0.0", **fields: Any) -> dict[str, Any]:
        return {"cniVersion": version, "name": NET, "type": "vrf", **fields, "prevResult": self.prev[ifname]}

    def run(self, binary: Path, verb: str, conf: dict[str, Any], ifname: str = "eth0", **kw: Any):
        """Our `binary` or the reference's, for this container (`cnitest.run_plugin`)."""
        kw.setdefault("netns", self.path)
        kw.setdefault("timeout", EXEC_TIMEOUT)
        return run_plugin(binary, verb, conf, host_netns=self.host, container_id=CTR, ifname=ifname, **kw)

    def state(self) -> dict[str, Any]:
        links = json.loads(run("ip", "-n", self.name, "-j", "-d", "link", "show").stdout)
        vrfs = {link["ifname"]: link["linkinfo"]["info_data"].get("table") for link in links
                if link.get("linkinfo", {}).get("info_kind") == "vrf"}
        masters = {link["ifname"]: link.get("master") for link in links if link["ifname"].startswith("eth")}
        addrs = json.loads(run("ip", "-n", self.name, "-j", "addr", "show").stdout)
        global_addrs = sorted(f"{a['ifname']} {i['local']}/{i['prefixlen']}" for a in addrs
                              for i in a.get("addr_info", []) if i.get("scope") == "global")
        routes = []
        for fam in ("-4", "-6"):
            for r in json.loads(run("ip", fam, "-n", self.name, "-j", "route", "show", "table", "all").stdout):
                if r.get("table") == "local" or r.get("dst", "").startswith(("ff00", "fe80", "multicast")):
                    continue
                if r.get("type") in ("local", "multicast", "broadcast"):
                    continue
                r.pop("expires", None)
                routes.append(json.dumps(r, sort_keys=True))
        return {"vrfs": vrfs, "masters": masters, "addrs": global_addrs, "routes": sorted(routes)}


@pytest.fixture
def container(make_netns, reference_plugins, tmp_path):
    """Factory: Ctr with one reference ptp attachment per ifname given, dual-stack."""
    made: list[tuple[Ctr, str, dict]] = []

    def _make(*ifnames: str, version: str = "1.0.0") -> Ctr:
        host, _ = make_netns("rcn-h-")
        _, path = make_netns()
        ctr = Ctr(host, path)
        run("ip", "-n", host, "link", "set", "lo", "up")
        for n, ifname in enumerate(ifnames or ("eth0",)):
            ptp = {"cniVersion": version, "name": NET, "type": "ptp",
                   "ipam": {"type": "host-local", "dataDir": str(tmp_path / unique("ipam")),
                            "ranges": [[{"subnet": f"10.9{n}.0.0/24"}], [{"subnet": f"fd00:9{n}::/64"}]],
                            "routes": [{"dst": f"10.20{n}.0.0/16"}]}}
            res = exec_plugin(reference_plugins / "ptp", "ADD", ptp, netns=path, container_id=CTR, ifname=ifname,
                              netns_exec=host, cni_path=reference_plugins, timeout=EXEC_TIMEOUT)
            assert res.code == 0, res.stdout + res.stderr
            ctr.prev[ifname] = res.json
            made.append((ctr, ifname, ptp))
        return ctr

    yield _make
    for ctr, ifname, ptp in made:
        exec_plugin(reference_plugins / "ptp", "DEL", ptp, netns=ctr.path, container_id=CTR, ifname=ifname,
                    netns_exec=ctr.host, cni_path=reference_plugins)


# --- validation: no kernel support needed -------------------------------------------------------


def test_config_errors(container, plugin_dir):
    ctr = container()
    conf = ctr.conf()
    res = ctr.run(plugin_dir / "vrf", "ADD", conf)
    assert res.json["code"] == 7 and "vrfname" in res.json["msg"]
    conf = ctr.conf(vrfname="blue")
    conf.pop("prevResult")
    res = ctr.run(plugin_dir / "vrf", "ADD", conf)
    assert res.json["code"] == 7 and "prevResult" in res.json["msg"]
    res = ctr.run(plugin_dir / "vrf", "ADD", ctr.conf(vrfname="a-much-too-long-vrf-name"))
    assert res.json["code"] == 7 and "vrfname" in res.json["msg"]
    res = ctr.run(plugin_dir / "vrf", "ADD", ctr.conf(vrfname="blue", table=-1))
    assert res.json["code"] == 7 and "table" in res.json["msg"]
    res = ctr.run(plugin_dir / "vrf", "ADD", ctr.conf("eth0", "0.3.0", vrfname="blue"))
    assert res.json["code"] == 1  # vrf supports 0.3.1 and later, as the reference


def test_del_without_vrf_or_netns_is_fine(container, plugin_dir):
    ctr = container()
    assert ctr.run(plugin_dir / "vrf", "DEL", ctr.conf(vrfname="blue")).code == 0
    assert ctr.run(plugin_dir / "vrf", "DEL", ctr.conf(vrfname="blue"), netns="/run/netns/rcn-gone").code == 0


def test_add_on_a_kernel_without_vrf_says_so(container, plugin_dir):
    if not vrf_unavailable():
        pytest.skip("this kernel has VRF links: the error needs one without (the host's kernel)")
    ctr = container()
    before = ctr.state()
    res = ctr.run(plugin_dir / "vrf", "ADD", ctr.conf(vrfname="rcnblue"))
    assert res.code != 0 and res.json["code"] == 999, res.json
    assert "rcnblue" in res.json["msg"] and "CONFIG_NET_VRF" in res.json["details"], res.json
    assert ctr.state() == before  # nothing half-applied


# --- kernel: VRF support needed -----------------------------------------------------------------


@pytest.mark.kernelvm
@pytest.mark.parametrize("table", [None, 42])
def test_differential(need_vrf, container, reference_plugins, plugin_dir, table):
    ref, ours = container(), container()
    fields: dict[str, Any] = {"vrfname": "rcnblue"}
    if table:
        fields["table"] = table
    for ctr, binary in ((ref, reference_plugins / "vrf"), (ours, plugin_dir / "vrf")):
        res = ctr.run(binary, "ADD", ctr.conf(**fields))
        assert res.code == 0, f"{binary}: {res.stdout} {res.stderr}"
        assert res.json["ips"] == ctr.prev["eth0"]["ips"]
    state, ref_state = ours.state(), ref.state()
    ours_routes, ref_routes = set(state.pop("routes")), set(ref_state.pop("routes"))
    assert state == ref_state
    # v1.1.1 keeps only the IPv6 addresses; like HEAD we also put the interface's routes back, in the
    # VRF's table: ours is the reference's set plus those
    assert ref_routes <= ours_routes, sorted(ref_routes - ours_routes)
    state["routes"] = sorted(ours_routes)
    assert state["vrfs"] == {"rcnblue": table or 1} and state["masters"] == {"eth0": "rcnblue"}
    assert any("fd00:90::" in a for a in state["addrs"]) and any("10.90.0." in a for a in state["addrs"])
    want_table = f'"table": "{table or 1}"'
    assert any(want_table in r and "10.200.0.0/16" in r for r in state["routes"]), state["routes"]
    for ctr in (ref, ours):
        for binary in (reference_plugins / "vrf", plugin_dir / "vrf"):
            assert ctr.run(binary, "CHECK", ctr.conf(**fields)).code == 0, binary
    for ctr, binary in ((ref, reference_plugins / "vrf"), (ours, plugin_dir / "vrf")):
        for _ in range(2):
            res = ctr.run(binary, "DEL", ctr.conf(**fields))
            assert res.code == 0, res.stdout + res.stderr
    assert ours.state()["vrfs"] == ref.state()["vrfs"] == {}


@pytest.mark.kernelvm
def test_shared_vrf_lives_until_last_member(need_vrf, container, plugin_dir):
    ctr = container("eth0", "eth1")
    for ifname in ("eth0", "eth1"):
        assert ctr.run(plugin_dir / "vrf", "ADD", ctr.conf(ifname, vrfname="rcnred"), ifname).code == 0
    assert ctr.state()["masters"] == {"eth0": "rcnred", "eth1": "rcnred"}
    assert ctr.run(plugin_dir / "vrf", "DEL", ctr.conf("eth0", vrfname="rcnred"), "eth0").code == 0
    assert ctr.state()["vrfs"] == {"rcnred": 1} and ctr.state()["masters"]["eth0"] is None
    assert ctr.run(plugin_dir / "vrf", "DEL", ctr.conf("eth1", vrfname="rcnred"), "eth1").code == 0
    assert ctr.state()["vrfs"] == {}


@pytest.mark.kernelvm
def test_tables_chosen_and_conflicts(need_vrf, container, plugin_dir):
    ctr = container("eth0", "eth1")
    assert ctr.run(plugin_dir / "vrf", "ADD", ctr.conf("eth0", vrfname="rcna"), "eth0").code == 0
    assert ctr.run(plugin_dir / "vrf", "ADD", ctr.conf("eth1", vrfname="rcnb"), "eth1").code == 0
    assert ctr.state()["vrfs"] == {"rcna": 1, "rcnb": 2}
    res = ctr.run(plugin_dir / "vrf", "ADD", ctr.conf("eth1", vrfname="rcna", table=9), "eth1")
    assert res.json["code"] == 7 and "table" in res.json["msg"]
    run("ip", "-n", ctr.name, "link", "set", "eth0", "nomaster")
    bad = ctr.run(plugin_dir / "vrf", "CHECK", ctr.conf("eth0", vrfname="rcna"), "eth0")
    assert bad.code != 0 and "member" in bad.json["msg"]


@pytest.mark.kernelvm
def test_traffic_through_the_vrf(need_vrf, container, plugin_dir):
    """A socket bound to the VRF reaches the host through the moved routes."""
    ctr = container()
    assert ctr.run(plugin_dir / "vrf", "ADD", ctr.conf(vrfname="rcnblue")).code == 0
    gw = ctr.prev["eth0"]["ips"][0]["gateway"]
    server = subprocess.Popen(["ip", "netns", "exec", ctr.host, sys.executable, "-c", LISTENER, gw],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        run("ip", "netns", "exec", ctr.name, sys.executable, "-c", CONNECT, gw, "rcnblue", timeout=EXEC_TIMEOUT)
        assert server.stdout.readline().startswith("from 10.90.0.")
    finally:
        server.kill()
        server.wait()


LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 15401)); s.listen(1); print("ready", flush=True)
c, peer = s.accept(); print("from", peer[0], flush=True)
"""
CONNECT = """
import socket, sys
s = socket.socket(); s.settimeout(10)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[2].encode())
s.connect((sys.argv[1], 15401))
"""
