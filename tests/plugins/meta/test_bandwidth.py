"""bandwidth, ours vs the reference, chained after the reference ptp + host-local.

Each attachment gets its own pair of namespaces: one standing in for the host
(the plugins run inside it), one for the container. The same network name and
container ID are used on both sides so that the ifb names must be identical.
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

pytestmark = pytest.mark.timeout(180)

NET = "rcnbw"
CTR = "rcnctr-bw1"
LIMITS = {"ingressRate": 8_000_000, "ingressBurst": 80_000, "egressRate": 4_000_000, "egressBurst": 40_000}


class Attachment:
    """A reference ptp attachment: host netns name, container netns path, prevResult."""

    def __init__(self, host: str, ctr_path: str, prev: dict[str, Any], ptp_conf: dict[str, Any]) -> None:
        self.host = host
        self.ctr_path = ctr_path
        self.ctr = Path(ctr_path).name
        self.prev = prev
        self.ptp_conf = ptp_conf
        self.last: dict[str, Any] = {}

    @property
    def host_veth(self) -> str:
        return next(i["name"] for i in self.prev["interfaces"] if not i.get("sandbox"))

    def conf(self, version: str = "1.0.0", prev: dict | None = None, **fields: Any) -> dict[str, Any]:
        return {"cniVersion": version, "name": NET, "type": "bandwidth", **fields, "prevResult": prev or self.prev}

    def run(self, binary: Path, verb: str, conf: dict[str, Any], cni_path: Path | None = None):
        return exec_plugin(
            binary, verb, conf, netns=self.ctr_path, container_id=CTR, netns_exec=self.host,
            cni_path=cni_path or binary.parent,
        )


@pytest.fixture
def attach(make_netns, reference_plugins, tmp_path):
    """Factory: a fresh reference ptp attachment in its own host/container namespaces."""
    made: list[Attachment] = []

    def _make(subnet: str = "10.99.0.0/24", version: str = "1.0.0") -> Attachment:
        host, _ = make_netns("rcn-h-")
        _, ctr_path = make_netns()
        ptp = {
            "cniVersion": version, "name": NET, "type": "ptp",
            "ipam": {"type": "host-local", "subnet": subnet, "dataDir": str(tmp_path / unique("ipam"))},
        }
        res = exec_plugin(reference_plugins / "ptp", "ADD", ptp, netns=ctr_path, container_id=CTR,
                          netns_exec=host, cni_path=reference_plugins)
        assert res.code == 0, res.stdout + res.stderr
        att = Attachment(host, ctr_path, res.json, ptp)
        made.append(att)
        return att

    yield _make
    for att in made:
        exec_plugin(reference_plugins / "ptp", "DEL", att.ptp_conf, netns=att.ctr_path, container_id=CTR,
                    netns_exec=att.host, cni_path=reference_plugins)


def qdisc_state(host: str, veth: str) -> list[tuple]:
    """Normalised qdiscs: (device role, kind, handle, parent, rate, burst, latency)."""
    out = json.loads(run("tc", "-n", host, "-j", "qdisc", "show").stdout or "[]")
    state = []
    for q in out:
        if q["kind"] in ("noqueue", "noop"):
            continue
        dev = "VETH" if q["dev"] == veth else q["dev"]
        opts = q.get("options", {})
        burst = str(opts.get("burst", "")).split("b")[0]
        state.append((dev, q["kind"], q["handle"], q.get("parent", "root" if q.get("root") else ""),
                      opts.get("rate"), burst, opts.get("lat")))
    return sorted(state)


def redirect_targets(host: str, veth: str) -> set[str]:
    text = run("tc", "-n", host, "filter", "show", "dev", veth, "ingress", check=False).stdout
    return {line.split("device ")[1].split(")")[0] for line in text.splitlines() if "Redirect to device" in line}


def ifbs(host: str) -> dict[str, dict]:
    links = json.loads(run("ip", "-n", host, "-j", "-d", "link", "show", "type", "ifb").stdout or "[]")
    return {link["ifname"]: link for link in links}


def normalise_result(result: dict, att: Attachment) -> dict:
    """Drop what differs between two attachments by construction: host veth name, MACs, empty dns."""
    out = json.loads(json.dumps(result))
    if not out.get("dns"):
        out.pop("dns", None)
    for iface in out.get("interfaces", []):
        iface["mac"] = "MAC"
        if iface.get("sandbox") == att.ctr_path:
            iface["sandbox"] = "CTRNETNS"
        if iface["name"] == att.host_veth:
            iface["name"] = "HOSTVETH"
    return out


def test_ifb_name_matches_reference_hash():
    import hashlib

    from reconciler.kernel.tc import ifb_name

    assert ifb_name(NET, CTR) == "bwp" + hashlib.sha512((NET + CTR).encode()).hexdigest()[:12]
    assert len(ifb_name(NET, CTR)) == 15


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_differential_add_check_del(attach, reference_plugins, plugin_dir, version):
    ref, ours = attach(version=version), attach(version=version)
    results = {}
    for name, att, binary in (("ref", ref, reference_plugins / "bandwidth"), ("ours", ours, plugin_dir / "bandwidth")):
        res = att.run(binary, "ADD", att.conf(version, **LIMITS), cni_path=reference_plugins)
        assert res.code == 0, f"{name}: {res.stdout} {res.stderr}"
        att.last = res.json
        results[name] = normalise_result(res.json, att)
    assert results["ours"] == results["ref"]
    our_ifaces = [i["name"] for i in results["ours"]["interfaces"]]
    assert len(our_ifaces) == 3 and our_ifaces[-1].startswith("bwp")

    assert qdisc_state(ours.host, ours.host_veth) == qdisc_state(ref.host, ref.host_veth)
    ifb = our_ifaces[-1]
    assert redirect_targets(ours.host, ours.host_veth) == redirect_targets(ref.host, ref.host_veth) == {ifb}
    ours_ifb, ref_ifb = ifbs(ours.host)[ifb], ifbs(ref.host)[ifb]
    for key in ("mtu", "operstate", "txqlen"):
        assert ours_ifb.get(key) == ref_ifb.get(key), key

    if version != "0.3.1":
        # CHECK: each plugin accepts the other's kernel state too
        for att in (ref, ours):
            for binary in (reference_plugins / "bandwidth", plugin_dir / "bandwidth"):
                chk = att.run(binary, "CHECK", att.conf(version, prev=att.last, **LIMITS), cni_path=reference_plugins)
                assert chk.code == 0, f"{binary} CHECK on {att.host}: {chk.stdout} {chk.stderr}"

    for att, binary in ((ref, reference_plugins / "bandwidth"), (ours, plugin_dir / "bandwidth")):
        for _ in range(2):  # DEL twice succeeds
            res = att.run(binary, "DEL", att.conf(version, **LIMITS), cni_path=reference_plugins)
            assert res.code == 0, res.stdout + res.stderr
        assert ifb not in ifbs(att.host)


def test_check_detects_drift(attach, plugin_dir):
    att = attach()
    res = att.run(plugin_dir / "bandwidth", "ADD", att.conf(**LIMITS))
    assert res.code == 0, res.stdout + res.stderr
    prev = res.json
    ok = att.run(plugin_dir / "bandwidth", "CHECK", att.conf(prev=prev, **LIMITS))
    assert ok.code == 0, ok.stdout
    run("tc", "-n", att.host, "qdisc", "replace", "dev", att.host_veth, "root", "handle", "1:", "tbf",
        "rate", "1mbit", "burst", "10kb", "latency", "25ms")
    bad = att.run(plugin_dir / "bandwidth", "CHECK", att.conf(prev=prev, **LIMITS))
    assert bad.code != 0 and "rate" in bad.json["msg"]
    ifb = prev["interfaces"][-1]["name"]
    run("ip", "-n", att.host, "link", "del", ifb)
    bad = att.run(plugin_dir / "bandwidth", "CHECK", att.conf(prev=prev, **LIMITS))
    assert bad.code != 0


def test_add_twice_and_del_without_netns(attach, plugin_dir):
    att = attach()
    conf = att.conf(**LIMITS)
    first = att.run(plugin_dir / "bandwidth", "ADD", conf)
    second = att.run(plugin_dir / "bandwidth", "ADD", conf)
    assert first.code == second.code == 0, second.stdout
    assert [i["name"] for i in first.json["interfaces"]] == [i["name"] for i in second.json["interfaces"]]
    ifb = first.json["interfaces"][-1]["name"]
    # DEL with the container netns already gone still removes the ifb
    res = exec_plugin(plugin_dir / "bandwidth", "DEL", conf, netns="", container_id=CTR, netns_exec=att.host)
    assert res.code == 0, res.stdout + res.stderr
    assert ifb not in ifbs(att.host)


def test_capability_and_ingress_only(attach, plugin_dir):
    att = attach()
    conf = att.conf()
    conf["runtimeConfig"] = {"bandwidth": {"ingressRate": 16_000_000, "ingressBurst": 160_000}}
    res = att.run(plugin_dir / "bandwidth", "ADD", conf)
    assert res.code == 0, res.stdout + res.stderr
    assert len(res.json["interfaces"]) == 2  # no ifb without egress shaping
    state = qdisc_state(att.host, att.host_veth)
    assert [s[:3] for s in state] == [("VETH", "tbf", "1:")]
    assert state[0][4] == 2_000_000
    # top-level fields win over the capability
    att2 = attach("10.98.0.0/24")
    conf2 = att2.conf(ingressRate=8_000_000, ingressBurst=80_000)
    conf2["runtimeConfig"] = {"bandwidth": {"ingressRate": 16_000_000, "ingressBurst": 160_000}}
    assert att2.run(plugin_dir / "bandwidth", "ADD", conf2).code == 0
    assert qdisc_state(att2.host, att2.host_veth)[0][4] == 1_000_000


def test_zero_limits_pass_through(attach, plugin_dir):
    att = attach()
    res = att.run(plugin_dir / "bandwidth", "ADD", att.conf(ingressRate=0, ingressBurst=0))
    assert res.code == 0
    assert res.json["interfaces"] == att.prev["interfaces"]
    assert qdisc_state(att.host, att.host_veth) == []


@pytest.mark.parametrize(
    "fields, word",
    [
        ({"ingressRate": -1, "ingressBurst": 1000}, "ingressRate"),
        ({"egressRate": 1000, "egressBurst": -5}, "egressBurst"),
        ({"ingressRate": 0, "ingressBurst": 80_000}, "ingressRate"),
        ({"egressRate": 8_000_000}, "egressBurst"),
        ({"ingressRate": 8_000_000, "ingressBurst": 0}, "ingressBurst"),
        ({"ingressRate": "fast", "ingressBurst": 10}, "ingressRate"),
        ({"ingressRate": 8_000_000, "ingressBurst": 8 * 2**32}, "4GB"),
    ],
)
def test_bad_inputs_write_nothing(attach, plugin_dir, fields, word):
    att = attach()
    before = (qdisc_state(att.host, att.host_veth), set(ifbs(att.host)))
    conf = att.conf(**fields)
    res = att.run(plugin_dir / "bandwidth", "ADD", conf)
    assert res.json["code"] == 7, res.stdout + res.stderr
    assert word in res.json["msg"]
    assert (qdisc_state(att.host, att.host_veth), set(ifbs(att.host))) == before
    # the same values through the capability are rejected too
    cap = att.conf()
    cap["runtimeConfig"] = {"bandwidth": fields}
    res = att.run(plugin_dir / "bandwidth", "ADD", cap)
    assert res.json["code"] == 7, res.stdout


def test_requires_prev_result_and_version(attach, plugin_dir):
    att = attach()
    conf = att.conf(**LIMITS)
    conf.pop("prevResult")
    res = att.run(plugin_dir / "bandwidth", "ADD", conf)
    assert res.json["code"] == 7 and "prevResult" in res.json["msg"]
    old = att.conf("0.2.0", **LIMITS)
    assert att.run(plugin_dir / "bandwidth", "ADD", old).json["code"] == 1


def test_gc_removes_only_invalid_attachments_of_this_network(attach, plugin_dir):
    att = attach()
    res = att.run(plugin_dir / "bandwidth", "ADD", att.conf("1.0.0", **LIMITS))
    assert res.code == 0
    ifb = res.json["interfaces"][-1]["name"]
    foreign = "rcnbwpforeign"
    run("ip", "-n", att.host, "link", "add", foreign, "type", "ifb")
    gc_conf = {"cniVersion": "1.1.0", "name": NET, "type": "bandwidth",
               "cni.dev/valid-attachments": [{"containerID": CTR, "ifname": "eth0"}]}
    assert exec_plugin(plugin_dir / "bandwidth", "GC", gc_conf, netns_exec=att.host).code == 0
    assert ifb in ifbs(att.host)
    gc_conf["cni.dev/valid-attachments"] = []
    other = dict(gc_conf, name="rcnothernet")
    assert exec_plugin(plugin_dir / "bandwidth", "GC", other, netns_exec=att.host).code == 0
    assert ifb in ifbs(att.host)  # another network's GC leaves ours alone
    assert exec_plugin(plugin_dir / "bandwidth", "GC", gc_conf, netns_exec=att.host).code == 0
    assert ifb not in ifbs(att.host)
    assert foreign in ifbs(att.host)


# --- real traffic -------------------------------------------------------------------------------

RECEIVER = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); total = 0; start = None
while True:
    b = c.recv(65536)
    if not b: break
    if start is None: start = time.monotonic()
    total += len(b)
print(total, time.monotonic() - start, flush=True)
"""

SENDER = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
c.sendall(b"x" * int(sys.argv[3])); c.close()
"""


def throughput(recv_ns: str, recv_ip: str, send_ns: str, size: int) -> float:
    """Bytes per second moved from `send_ns` to `recv_ns` over TCP (measured at the receiver)."""
    port = "15201"
    rx = subprocess.Popen(["ip", "netns", "exec", recv_ns, sys.executable, "-c", RECEIVER, recv_ip, port],
                          stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        subprocess.run(["ip", "netns", "exec", send_ns, sys.executable, "-c", SENDER, recv_ip, port, str(size)],
                       check=True, timeout=90)
        total, elapsed = rx.stdout.readline().split()
    finally:
        rx.wait(timeout=90)
    assert int(total) == size
    return size / max(float(elapsed), 1e-6)


def test_traffic_is_shaped(attach, plugin_dir):
    """1 MB/s each way: shaped throughput stays near the rate; the unshaped veth is far faster."""
    att = attach()
    ctr_ip = att.prev["ips"][0]["address"].split("/")[0]
    host_ip = att.prev["ips"][0]["gateway"]
    size = 1_500_000
    unshaped = throughput(att.ctr, ctr_ip, att.host, size)
    rate_bits = 8_000_000  # 1 MB/s
    conf = att.conf(ingressRate=rate_bits, ingressBurst=100_000, egressRate=rate_bits, egressBurst=100_000)
    assert att.run(plugin_dir / "bandwidth", "ADD", conf).code == 0
    to_ctr = throughput(att.ctr, ctr_ip, att.host, size)
    from_ctr = throughput(att.host, host_ip, att.ctr, size)
    rate = rate_bits / 8
    print(f"throughput B/s: unshaped {unshaped:.0f}, to container {to_ctr:.0f}, from container {from_ctr:.0f}")
    assert to_ctr < 1.6 * rate, f"ingress not shaped: {to_ctr:.0f} B/s"
    assert from_ctr < 1.6 * rate, f"egress not shaped: {from_ctr:.0f} B/s"
    assert unshaped > 5 * to_ctr, f"unshaped {unshaped:.0f} vs shaped {to_ctr:.0f} B/s"
