"""host-local in-process: allocation order, idempotence, requests, errors, GC, STATUS, store safety."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.errors import INVALID_NETWORK_CONFIG, NOT_AVAILABLE, TRY_AGAIN_LATER, CNIError
from reconciler.plugins.ipam import host_local as hl
from tests.plugins.ipam.ipamtest import call, files_of, hl_conf

V4 = [{"subnet": "10.9.0.0/29"}]  # usable .2-.6 (gateway .1)
V6 = [{"subnet": "fd00:9::/125"}]  # usable ::2-::7


def ips_of(result) -> list[str]:
    return [ip.address for ip in result.ips]


def test_dual_stack_add_writes_reference_layout(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, V4, V6)
    res = call(hl, "ADD", conf, "c1")
    assert ips_of(res) == ["10.9.0.2/29", "fd00:9::2/125"]
    assert [ip.gateway for ip in res.ips] == ["10.9.0.1", "fd00:9::1"]
    net = tmp_path / "rcnnet"
    assert files_of(net) == {
        "10.9.0.2": b"c1\r\neth0",
        "fd00:9::2": b"c1\r\neth0",
        "last_reserved_ip.0": b"10.9.0.2",
        "last_reserved_ip.1": b"fd00:9::2",
    }
    assert stat.S_IMODE(net.stat().st_mode) == 0o700
    for f in net.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert not [p for p in net.iterdir() if p.name.startswith(".")]


def test_round_robin_and_exhaustion(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, V4)
    got = [ips_of(call(hl, "ADD", conf, f"c{i}"))[0] for i in range(5)]
    assert got == [f"10.9.0.{n}/29" for n in range(2, 7)]
    with pytest.raises(CNIError) as err:
        call(hl, "ADD", conf, "c5")
    assert err.value.code == TRY_AGAIN_LATER
    assert "no IP addresses available in range set: 10.9.0.1-10.9.0.6" in err.value.msg
    call(hl, "DEL", conf, "c1")
    call(hl, "DEL", conf, "c3")
    # freed addresses come back in round-robin order after the last reserved one (.6): .3 then .5
    assert ips_of(call(hl, "ADD", conf, "n1")) == ["10.9.0.3/29"]
    assert ips_of(call(hl, "ADD", conf, "n2")) == ["10.9.0.5/29"]


def test_network_broadcast_and_gateway_skipped(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, [{"subnet": "10.9.1.0/30", "rangeStart": "10.9.1.0", "rangeEnd": "10.9.1.3"}])
    assert ips_of(call(hl, "ADD", conf, "a")) == ["10.9.1.2/30"]
    with pytest.raises(CNIError, match="no IP addresses available"):
        call(hl, "ADD", conf, "b")


def test_add_is_idempotent_per_id_and_ifname(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, V4, V6)
    first = call(hl, "ADD", conf, "c1")
    again = call(hl, "ADD", conf, "c1")
    assert ips_of(again) == ips_of(first)
    other_if = call(hl, "ADD", conf, "c1", ifname="net1")
    assert ips_of(other_if) == ["10.9.0.3/29", "fd00:9::3/125"]
    assert (tmp_path / "rcnnet" / "10.9.0.3").read_bytes() == b"c1\r\nnet1"


def test_del_twice_and_without_store(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, V4)
    call(hl, "DEL", conf, "nobody")  # no network dir yet
    assert not (tmp_path / "rcnnet").exists()
    call(hl, "ADD", conf, "c1")
    call(hl, "ADD", conf, "c2")
    call(hl, "DEL", conf, "c1")
    call(hl, "DEL", conf, "c1")
    assert set(files_of(tmp_path / "rcnnet")) == {"10.9.0.3", "last_reserved_ip.0"}


def test_del_releases_even_when_ranges_no_longer_parse(tmp_path: Path) -> None:
    call(hl, "ADD", hl_conf(tmp_path, V4), "c1")
    broken = hl_conf(tmp_path, [{"subnet": "10.9.0.7/29"}])
    call(hl, "DEL", broken, "c1")
    assert "10.9.0.2" not in files_of(tmp_path / "rcnnet")


def test_del_legacy_id_only_file(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, V4)
    call(hl, "ADD", conf, "c0")
    (tmp_path / "rcnnet" / "10.9.0.5").write_bytes(b"old1")
    call(hl, "CHECK", conf, "old1")
    call(hl, "DEL", conf, "old1")
    assert "10.9.0.5" not in files_of(tmp_path / "rcnnet")


def test_check(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, V4)
    with pytest.raises(CNIError, match="Failed to find address added by container c1"):
        call(hl, "CHECK", conf, "c1")
    res = call(hl, "ADD", conf, "c1")
    call(hl, "CHECK", conf | {"prevResult": res.dump()}, "c1")
    wrong = {"cniVersion": "1.0.0", "ips": [{"address": "10.9.0.6/29"}]}
    with pytest.raises(CNIError, match="not reserved"):
        call(hl, "CHECK", conf | {"prevResult": wrong}, "c1")
    call(hl, "DEL", conf, "c1")
    with pytest.raises(CNIError):
        call(hl, "CHECK", conf, "c1")


@pytest.mark.parametrize(
    "how",
    [
        {"cni_args": "IgnoreUnknown=1;IP=10.9.0.5"},
        {"extra": {"args": {"cni": {"ips": ["10.9.0.5"]}}}},
        {"extra": {"runtimeConfig": {"ips": ["10.9.0.5/29"]}}},
    ],
)
def test_requested_ip_sources(tmp_path: Path, how: dict) -> None:
    conf = hl_conf(tmp_path, V4, V6) | how.get("extra", {})
    res = call(hl, "ADD", conf, "c1", cni_args=how.get("cni_args", ""))
    assert ips_of(res) == ["10.9.0.5/29", "fd00:9::2/125"]
    assert files_of(tmp_path / "rcnnet")["last_reserved_ip.0"] == b"10.9.0.5"
    # a second ADD asking for the same address is idempotent for the holder ...
    assert ips_of(call(hl, "ADD", conf, "c1", cni_args=how.get("cni_args", ""))) == ips_of(res)
    # ... and refused for anyone else
    with pytest.raises(CNIError) as err:
        call(hl, "ADD", conf, "c2", cni_args=how.get("cni_args", ""))
    assert err.value.code == TRY_AGAIN_LATER
    assert "requested IP address 10.9.0.5 is not available" in err.value.msg
    assert set(files_of(tmp_path / "rcnnet")) == {
        "10.9.0.5",
        "fd00:9::2",
        "last_reserved_ip.0",
        "last_reserved_ip.1",
    }


@pytest.mark.parametrize(
    ("cni_args", "problem"),
    [
        ("IP=10.9.0.1", "subnet's gateway"),
        ("IP=10.8.0.5", "requested IPs (CNI_ARGS IP, args.cni.ips, runtimeConfig.ips): not in any range: "
                        "failed to allocate all requested IPs: 10.8.0.5"),
        ("IP=10.9.0.7", "failed to allocate all requested IPs"),  # broadcast: outside rangeEnd
        ("IP=banana", "CNI_ARGS IP"),
        ("IP=10.9.0.3,10.9.0.4", "failed to allocate all requested IPs: 10.9.0.4"),
    ],
)
def test_requested_ip_errors(tmp_path: Path, cni_args: str, problem: str) -> None:
    with pytest.raises(CNIError) as err:
        call(hl, "ADD", hl_conf(tmp_path, V4), "c1", cni_args=cni_args)
    assert err.value.code == INVALID_NETWORK_CONFIG
    assert problem in err.value.msg
    assert not [n for n in files_of(tmp_path / "rcnnet") if n[0].isdigit()]


def test_ip_ranges_capability_prepended(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, V4) | {"runtimeConfig": {"ipRanges": [[{"subnet": "10.9.8.0/24"}]]}}
    res = call(hl, "ADD", conf, "c1")
    assert ips_of(res) == ["10.9.8.2/24", "10.9.0.2/29"]
    assert files_of(tmp_path / "rcnnet")["last_reserved_ip.0"] == b"10.9.8.2"


def test_legacy_shorthand_multi_range_set_routes_and_dns(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        "# c\nnameserver 10.0.0.53\nnameserver fd00::53\ndomain ex.test\nsearch a.test b.test\noptions ndots:2\n"
    )
    conf = hl_conf(
        tmp_path,
        [
            {"subnet": "10.9.2.0/24", "rangeStart": "10.9.2.250", "rangeEnd": "10.9.2.251"},
            {"subnet": "10.9.3.0/24"},
        ],
        subnet="10.9.0.0/24",
        rangeStart="10.9.0.10",
        gateway="10.9.0.254",
        routes=[{"dst": "0.0.0.0/0"}, {"dst": "10.99.0.0/16", "gw": "10.9.0.254"}],
        resolvConf=str(resolv),
    )
    res = call(hl, "ADD", conf, "c1")
    assert ips_of(res) == ["10.9.0.10/24", "10.9.2.250/24"]
    assert res.ips[0].gateway == "10.9.0.254"
    assert [r.dst for r in res.routes] == ["0.0.0.0/0", "10.99.0.0/16"]
    assert res.dns.nameservers == ["10.0.0.53", "fd00::53"]
    assert (
        res.dns.domain == "ex.test"
        and res.dns.search == ["a.test", "b.test"]
        and res.dns.options == ["ndots:2"]
    )
    call(hl, "ADD", conf, "c2")
    # second range set cycles from its first range into the next one
    assert ips_of(call(hl, "ADD", conf, "c3")) == ["10.9.0.12/24", "10.9.3.2/24"]


def test_failed_second_set_rolls_back_first(tmp_path: Path) -> None:
    tiny = [{"subnet": "10.9.5.0/30"}]  # one usable address
    conf = hl_conf(tmp_path, V4, tiny)
    call(hl, "ADD", conf, "c1")
    with pytest.raises(CNIError, match="failed to allocate for range 1"):
        call(hl, "ADD", conf, "c2")
    held = {n: v for n, v in files_of(tmp_path / "rcnnet").items() if n[0].isdigit()}
    assert held == {"10.9.0.2": b"c1\r\neth0", "10.9.5.2": b"c1\r\neth0"}


@pytest.mark.parametrize(
    ("ranges", "field", "problem"),
    [
        ([[{"subnet": "10.9.0.0/24"}, {"subnet": "10.9.0.128/25"}]], "ipam.ranges[0][1]", "overlap"),
        (
            [[{"subnet": "10.9.0.0/24"}], [{"subnet": "10.9.0.0/25"}]],
            "ipam.ranges",
            "range set 0 overlaps with 1",
        ),
        (
            [[{"subnet": "10.9.0.0/24", "rangeStart": "10.9.1.5"}]],
            "ipam.ranges[0][0].rangeStart",
            "not in network",
        ),
        (
            [[{"subnet": "10.9.0.0/24", "rangeEnd": "10.9.1.5"}]],
            "ipam.ranges[0][0].rangeEnd",
            "not in network",
        ),
        ([[{"subnet": "10.9.0.0/33"}]], "ipam.ranges[0][0].subnet", "invalid CIDR"),
        ([[{"subnet": "10.9.0.0"}]], "ipam.ranges[0][0].subnet", "not a CIDR"),
        ([[{"subnet": "10.9.0.1/24"}]], "ipam.ranges[0][0].subnet", "host bits set"),
        ([[{"subnet": "10.9.0.0/31"}]], "ipam.ranges[0][0].subnet", "too small"),
        ([[{"subnet": "10.9.0.0/24", "gateway": "fd00::1"}]], "ipam.ranges[0][0].gateway", "IPv4"),
        (
            [[{"subnet": "10.9.0.0/24"}, {"subnet": "fd00::/64"}]],
            "ipam.ranges[0][1]",
            "mixed address families",
        ),
        (
            [[{"subnet": "10.9.0.0/24", "rangeStart": "10.9.0.9", "rangeEnd": "10.9.0.5"}]],
            "rangeEnd",
            "before",
        ),
        ([], "ipam.ranges", "no IP ranges"),
        ([{"subnet": "10.9.0.0/24"}], "ipam.ranges[0]", "non-empty list"),
    ],
)
def test_config_errors_name_the_field(tmp_path: Path, ranges: list, field: str, problem: str) -> None:
    conf = hl_conf(tmp_path) | {"ipam": {"type": "host-local", "dataDir": str(tmp_path), "ranges": ranges}}
    with pytest.raises(CNIError) as err:
        call(hl, "ADD", conf, "c1")
    assert err.value.code == INVALID_NETWORK_CONFIG
    assert field in err.value.msg and problem in err.value.msg
    assert not (tmp_path / "rcnnet").exists()


def test_two_v4_sets_need_030(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, V4, [{"subnet": "10.9.9.0/24"}], version="0.2.0")
    with pytest.raises(CNIError, match="does not support more than 1 address per family"):
        call(hl, "ADD", conf, "c1")


def test_gc_keeps_valid_attachments_only(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, V4, V6, version="1.1.0")
    for cid in ("keep", "drop"):
        call(hl, "ADD", conf, cid)
    net = tmp_path / "rcnnet"
    (net / "10.9.0.6").write_bytes(b"legacykeep")
    (net / "10.9.0.5").write_bytes(b"legacydrop")
    gc_conf = conf | {
        "cni.dev/valid-attachments": [
            {"containerID": "keep", "ifname": "eth0"},
            {"containerID": "legacykeep", "ifname": "eth0"},
        ]
    }
    call(hl, "GC", gc_conf, cid="", ifname="")
    held = {n: v for n, v in files_of(net).items() if n[0].isdigit() or ":" in n}
    assert held == {"10.9.0.2": b"keep\r\neth0", "fd00:9::2": b"keep\r\neth0", "10.9.0.6": b"legacykeep"}
    call(hl, "GC", conf | {"cni.dev/valid-attachments": []}, cid="", ifname="")
    assert set(files_of(net)) == {"last_reserved_ip.0", "last_reserved_ip.1"}


def test_status(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, [{"subnet": "10.9.5.0/30"}], version="1.1.0")
    call(hl, "STATUS", conf)
    call(hl, "ADD", conf, "c1")
    with pytest.raises(CNIError) as err:
        call(hl, "STATUS", conf)
    assert err.value.code == NOT_AVAILABLE and "no IP addresses available" in err.value.msg
    call(hl, "DEL", conf, "c1")
    call(hl, "STATUS", conf)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(CNIError) as err:
        call(hl, "STATUS", hl_conf(blocker, [{"subnet": "10.9.5.0/30"}], version="1.1.0"))
    assert err.value.code == NOT_AVAILABLE and "not writable" in err.value.msg


def test_half_written_and_temporary_files_are_not_trusted(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, V4)
    call(hl, "ADD", conf, "c1")
    net = tmp_path / "rcnnet"
    (net / "10.9.0.3").write_bytes(b"")  # the reference killed between O_EXCL create and write
    (net / "10.9.0.4").write_bytes(b"\x00\x00\x00\x00\x00")  # lost write after a power cut
    (net / "10.9.0.5").write_bytes(b"pod with spaces\r\neth0")  # odd but complete: still taken
    (net / ".rcn-tmp-99999-deadbeef").write_bytes(b"c9\r\neth0")  # ours killed before link()
    assert ips_of(call(hl, "ADD", conf, "c2")) == ["10.9.0.3/29"]
    assert ips_of(call(hl, "ADD", conf, "c3")) == ["10.9.0.4/29"]
    assert ips_of(call(hl, "ADD", conf, "c4")) == ["10.9.0.6/29"]
    assert (net / "10.9.0.5").read_bytes() == b"pod with spaces\r\neth0"
    assert not [p for p in net.iterdir() if p.name.startswith(".")]


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path / "data", V4)
    call(hl, "ADD", conf, "c1")
    net = tmp_path / "data" / "rcnnet"
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (net / "10.9.0.3").symlink_to(victim)
    assert ips_of(call(hl, "ADD", conf, "c2")) == ["10.9.0.4/29"]  # .3 is taken, not trusted
    call(hl, "GC", conf | {"cniVersion": "1.1.0", "cni.dev/valid-attachments": []}, cid="", ifname="")
    assert victim.read_bytes() == b"precious" and (net / "10.9.0.3").is_symlink()
    # a network directory that is a symlink is refused
    (tmp_path / "data" / "evil").symlink_to(tmp_path)
    with pytest.raises(CNIError):
        call(hl, "ADD", hl_conf(tmp_path / "data", V4, name="evil"), "c1")


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", ""])
def test_network_names_cannot_escape(tmp_path: Path, name: str) -> None:
    with pytest.raises(CNIError) as err:
        call(hl, "ADD", hl_conf(tmp_path / "data", V4, name=name), "c1")
    assert err.value.code == INVALID_NETWORK_CONFIG
    assert not (tmp_path / "escape").exists()


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILER_IPAM_DATADIR", str(tmp_path / "state" / "networks"))
    conf = {"cniVersion": "1.0.0", "name": "rcnnet", "ipam": {"type": "host-local", "ranges": [V4]}}
    call(hl, "ADD", conf, "c1")
    assert (tmp_path / "state" / "networks" / "rcnnet" / "10.9.0.2").read_bytes() == b"c1\r\neth0"
    call(hl, "DEL", conf, "c1")
    assert not (tmp_path / "state" / "networks" / "rcnnet" / "10.9.0.2").exists()
    assert os.environ["RECONCILER_IPAM_DATADIR"].startswith(str(tmp_path))


def test_gc_without_attachment_list_frees_nothing(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, V4, version="1.1.0")
    call(hl, "ADD", conf, "c1")
    with pytest.raises(CNIError) as err:
        call(hl, "GC", conf, cid="", ifname="")
    assert err.value.code == INVALID_NETWORK_CONFIG and "valid-attachments" in err.value.msg
    assert "10.9.0.2" in files_of(tmp_path / "rcnnet")
    call(
        hl, "GC", conf | {"cni.dev/attachments": [{"containerID": "c1", "ifname": "eth0"}]}, cid="", ifname=""
    )
    assert "10.9.0.2" in files_of(tmp_path / "rcnnet")


def test_store_reserve_paths_never_overwrite(tmp_path: Path) -> None:
    """Both ways of reserving (prepared O_TMPFILE, named temporary fallback) refuse to overwrite."""
    from reconciler.plugins.ipam.host_local.disk import DiskStore, Owner

    store = DiskStore.open(str(tmp_path), "rcnnet")
    assert store is not None
    a, b = Owner("a", "eth0"), Owner("b", "eth0")
    with store:
        store.prepare(a, 2)
        with store.locked():
            assert store.reserve("10.9.0.2", a)  # prepared
            assert not store.reserve("10.9.0.2", b)  # fallback, existing name
            assert store.reserve("10.9.0.3", b)  # fallback
            assert not store.reserve("10.9.0.3", a)  # prepared, existing name
    net = tmp_path / "rcnnet"
    assert files_of(net) == {"10.9.0.2": b"a\r\neth0", "10.9.0.3": b"b\r\neth0"}
    assert sorted(p.name for p in net.iterdir()) == ["10.9.0.2", "10.9.0.3", "lock"]


@pytest.mark.skipif(not shutil.which("strace"), reason="strace is not installed")
def test_add_links_first_then_syncs_file_and_directory_after_the_lock(tmp_path: Path) -> None:
    """The durable protocol, as the kernel sees it (a real ADD of two ranges under strace): each
    reservation is linked under the lock, then, after the lock is released and before ADD returns,
    its file is fsync'd, then the directory. No open descriptor is left behind."""
    conf = hl_conf(tmp_path, V4, V6)
    script = (
        "import json, os, sys\n"
        "from reconciler.plugins.ipam import host_local as hl\n"
        "from tests.plugins.ipam.ipamtest import call\n"
        "before = set(os.listdir('/proc/self/fd'))\n"
        "call(hl, 'ADD', json.loads(sys.argv[1]), 'c1')\n"
        "print('ADD-DONE', flush=True)\n"
        "leaked = set(os.listdir('/proc/self/fd')) - before\n"
        "assert not leaked, leaked\n"
    )
    trace = tmp_path / "trace"
    proc = subprocess.run(
        ["strace", "-qq", "-e", "trace=linkat,fsync,flock,write", "-o", str(trace),
         sys.executable, "-c", script, json.dumps(conf)],
        cwd=Path(__file__).resolve().parents[3], capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    calls = trace.read_text().splitlines()
    end = next(i for i, line in enumerate(calls) if "ADD-DONE" in line)
    links = [(i, m.group(1)) for i, line in enumerate(calls[:end])
             if (m := re.match(r'linkat\(AT_FDCWD, "/proc/self/fd/(\d+)", \d+, "(?:10\.9|fd00:9)', line))]
    assert len(links) == 2, calls[:end]
    unlock = next(i for i, line in enumerate(calls[:end]) if "LOCK_UN" in line)
    syncs = [(i, m.group(1)) for i, line in enumerate(calls[:end]) if (m := re.match(r"fsync\((\d+)\)", line))]
    assert all(i > unlock for i, _ in syncs), "nothing is fsync'd before or under the lock"
    assert [fd for _, fd in syncs[:2]] == [fd for _, fd in links], "each linked file, once, after the lock"
    assert len(syncs) == 3, "then the directory, once"
