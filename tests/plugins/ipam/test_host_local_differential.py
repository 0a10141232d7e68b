"""Differential: ours (exec'd) and /usr/lib/cni/host-local give the same results and the same files.

Each scenario is a list of steps run against two fresh data directories, one
per implementation; after every step the outputs and the on-disk stores must
match. A final test interleaves both binaries on one shared directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.plugins.ipam.ipamtest import files_of, hl_conf

V4 = [{"subnet": "10.9.0.0/29"}]
V6 = [{"subnet": "fd00:9::/125"}]


def normalise(out: Any) -> Any:
    """The v1.1.1 binaries print "dns": {} even in 1.0.0; an empty dns means none."""
    if isinstance(out, dict) and out.get("dns") == {} and out.get("cniVersion", "").startswith("1."):
        out = {k: v for k, v in out.items() if k != "dns"}
    return out


Step = tuple[str, str, str, dict[str, Any]]  # verb, container id, CNI_ARGS, extra config keys


def sequence(*cids: str, verb: str = "ADD") -> list[Step]:
    return [(verb, cid, "", {}) for cid in cids]


SCENARIOS: dict[str, tuple[list[list[dict[str, Any]]], dict[str, Any], list[Step]]] = {
    "dual-stack-exhaust-and-wrap": (
        [V4, V6],
        {},
        sequence("c1", "c2", "c3", "c4", "c5", "c6")
        + sequence("c2", "c4", "nobody", verb="DEL")
        + sequence("n1", "n2", "n3")
        + sequence("c1", "n1", "c2", verb="CHECK"),
    ),
    "requested-ips": (
        [V4, V6],
        {},
        [
            ("ADD", "r1", "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.9.0.5", {}),
            ("ADD", "r2", "", {"args": {"cni": {"ips": ["10.9.0.3", "fd00:9::6"]}}}),
            ("ADD", "r3", "", {"runtimeConfig": {"ips": ["fd00:9::4/125"]}}),
            ("ADD", "r4", "IP=10.9.0.5", {}),  # taken
            ("ADD", "r5", "IP=10.9.0.1", {}),  # gateway
            ("ADD", "r7", "", {}),
            ("DEL", "r2", "", {}),
            ("ADD", "r8", "", {}),
        ],
    ),
    "multi-range-and-legacy": (
        [
            [
                {"subnet": "10.9.2.0/24", "rangeStart": "10.9.2.250", "rangeEnd": "10.9.2.251"},
                {"subnet": "10.9.3.0/30"},
            ]
        ],
        {
            "subnet": "10.9.0.0/28",
            "rangeStart": "10.9.0.12",
            "gateway": "10.9.0.14",
            "routes": [{"dst": "0.0.0.0/0"}],
        },
        sequence("m1", "m2", "m3", "m4") + sequence("m1", "m3", verb="DEL") + sequence("m5", "m6", "m7"),
    ),
    "ip-ranges-capability": (
        [V4],
        {},
        [
            ("ADD", "k1", "", {"runtimeConfig": {"ipRanges": [[{"subnet": "10.9.8.0/30"}]]}}),
            ("ADD", "k2", "", {"runtimeConfig": {"ipRanges": [[{"subnet": "10.9.8.0/30"}]]}}),
            ("ADD", "k3", "", {}),
        ],
    ),
    "ipv6-only-big": (
        [[{"subnet": "fd00:a::/64", "rangeStart": "fd00:a::ffff:fffe"}]],
        {},
        sequence("v1", "v2", "v3", "v4"),
    ),
}


CASES = [("dual-stack-exhaust-and-wrap", v) for v in ("0.2.0", "0.3.1", "0.4.0", "1.0.0")] + [
    (name, "1.0.0") for name in sorted(SCENARIOS) if name != "dual-stack-exhaust-and-wrap"
]


@pytest.mark.parametrize(("scenario", "version"), CASES)
def test_same_results_and_files(
    tmp_path: Path, ours_bin, ref_bin, run_bin, scenario: str, version: str
) -> None:
    range_sets, extra_ipam, steps = SCENARIOS[scenario]
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.0.0.53\nsearch rcn.test\noptions ndots:1\n")
    dirs = {"ours": tmp_path / "ours", "ref": tmp_path / "ref"}
    bins = {"ours": ours_bin, "ref": ref_bin}
    if version != "1.0.0":
        steps = steps[:7] + steps[-3:]  # older versions: exhaustion, a DEL and CHECKs suffice
    for i, (verb, cid, cni_args, extra) in enumerate(steps):
        if verb == "CHECK" and version in ("0.2.0", "0.3.1"):
            continue
        outs = {}
        for impl in ("ref", "ours"):
            conf = (
                hl_conf(dirs[impl], *range_sets, version=version, resolvConf=str(resolv), **extra_ipam)
                | extra
            )
            run = run_bin(bins[impl], verb, conf, cid=cid, cni_args=cni_args)
            outs[impl] = (run.code == 0, normalise(run.json) if run.code == 0 else None, run.stdout)
        where = f"step {i} {verb} {cid} {cni_args} {extra}"
        assert outs["ours"][0] == outs["ref"][0], f"{where}: {outs}"
        assert outs["ours"][1] == outs["ref"][1], where
        assert files_of(dirs["ours"] / "rcnnet") == files_of(dirs["ref"] / "rcnnet"), where


def test_error_messages_resemble_the_reference(tmp_path: Path, ours_bin, ref_bin, run_bin) -> None:
    conf = hl_conf(tmp_path / "d", [{"subnet": "10.9.5.0/30"}])
    assert run_bin(ref_bin, "ADD", conf, cid="a").code == 0
    outs = [run_bin(b, "ADD", conf, cid="b").json for b in (ref_bin, ours_bin)]
    assert all("no IP addresses available in range set: 10.9.5.1-10.9.5.2" in o["msg"] for o in outs), outs


def test_request_outside_every_range(tmp_path: Path, ours_bin, ref_bin, run_bin) -> None:
    """Both refuse and keep nothing. (The reference allocates, then rolls back, advancing
    last_reserved_ip; ours validates before touching the store, so only reservations are compared.)"""
    for impl, binary in (("ours", ours_bin), ("ref", ref_bin)):
        conf = hl_conf(tmp_path / impl, V4, V6)
        assert run_bin(binary, "ADD", conf, cid="a").code == 0
        run = run_bin(binary, "ADD", conf, cid="b", cni_args="IP=10.7.0.1")
        assert run.code != 0 and "failed to allocate all requested IPs: 10.7.0.1" in run.json["msg"]
    held = [
        {n: v for n, v in files_of(tmp_path / impl / "rcnnet").items() if not n.startswith("last")}
        for impl in ("ours", "ref")
    ]
    assert held[0] == held[1] == {"10.9.0.2": b"a\r\neth0", "fd00:9::2": b"a\r\neth0"}


def test_interleaved_on_one_directory(tmp_path: Path, ours_bin, ref_bin, run_bin) -> None:
    """The two implementations share a store: round-robin continues, neither collides, either releases."""
    conf = hl_conf(tmp_path, [{"subnet": "10.9.6.0/28"}], [{"subnet": "fd00:9::/120"}])
    got: dict[str, list[str]] = {}
    for i in range(12):
        binary = ref_bin if i % 2 else ours_bin
        run = run_bin(binary, "ADD", conf, cid=f"x{i}")
        assert run.code == 0, run.stdout
        got[f"x{i}"] = [ip["address"] for ip in run.json["ips"]]
    v4 = [addrs[0] for addrs in got.values()]
    assert v4 == [f"10.9.6.{n}/28" for n in range(2, 14)]
    # each releases the other's reservations
    assert run_bin(ref_bin, "DEL", conf, cid="x0").code == 0
    assert run_bin(ours_bin, "DEL", conf, cid="x1").code == 0
    assert run_bin(ours_bin, "CHECK", conf, cid="x3").code == 0
    assert run_bin(ref_bin, "CHECK", conf, cid="x2").code == 0
    held = {n: v for n, v in files_of(tmp_path / "rcnnet").items() if not n.startswith("last")}
    assert "10.9.6.2" not in held and "10.9.6.3" not in held and len(held) == 20
    assert len(set(held)) == len(held)
    # the reference skips round-robin past what ours reserved last, and vice versa
    assert run_bin(ref_bin, "ADD", conf, cid="y1").json["ips"][0]["address"] == "10.9.6.14/28"
    assert run_bin(ours_bin, "ADD", conf, cid="y2").json["ips"][0]["address"] == "10.9.6.2/28"
    assert run_bin(ref_bin, "ADD", conf, cid="y3").json["ips"][0]["address"] == "10.9.6.3/28"
