"""A long-lived process's ADDs reuse its last scan of the store: it must follow every other writer.

The memo (disk._MEMO) is refreshed from a directory listing under the lock; these tests change the
store behind its back (the reference binary, other processes, in-place rewrites) and check that
the next in-process ADD still sees the truth.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from reconciler.plugins.ipam import host_local as hl
from reconciler.plugins.ipam.host_local import disk
from tests.plugins.ipam.ipamtest import call, files_of, hl_conf
from tests.plugins.ipam.test_host_local_stress import env_for, reservations

V4 = [{"subnet": "10.9.0.0/28"}]  # usable .2-.14 (gateway .1)


def addr(result: Any) -> str:
    return result.ips[0].address.split("/")[0]


def test_memo_is_kept_and_follows_the_reference(tmp_path: Path, ref_bin: Path, fake_netns: str) -> None:
    conf = hl_conf(tmp_path, V4)
    stdin = json.dumps(conf).encode()

    def ref(verb: str, cid: str) -> dict[str, Any]:
        proc = subprocess.run(
            [str(ref_bin)], input=stdin, env=env_for(verb, cid, fake_netns), capture_output=True
        )
        assert proc.returncode == 0, proc.stdout
        return json.loads(proc.stdout or b"null")

    assert addr(call(hl, "ADD", conf, "c1")) == "10.9.0.2"
    net = str(tmp_path / "rcnnet")
    assert set(disk._MEMO[net].scan.owners) == {"10.9.0.2"}  # kept for the next ADD
    ref("ADD", "r1")  # .3, behind our back
    ref("DEL", "c1")  # ours released by the reference
    assert addr(call(hl, "ADD", conf, "c2")) == "10.9.0.4"
    # c1 was released: a new address, not the memo's stale .2
    assert addr(call(hl, "ADD", conf, "c1")) == "10.9.0.5"
    # r1's reservation, made by the reference, is found and returned (ADD is idempotent)
    assert addr(call(hl, "ADD", conf, "r1")) == "10.9.0.3"
    assert ref("ADD", "r9")["ips"][0]["address"] == "10.9.0.6/28"  # the reference follows our round-robin
    assert reservations(Path(net)) == {
        "10.9.0.3": ("r1", "eth0"),
        "10.9.0.4": ("c2", "eth0"),
        "10.9.0.5": ("c1", "eth0"),
        "10.9.0.6": ("r9", "eth0"),
    }


def test_memo_rereads_the_callers_own_reservations(tmp_path: Path) -> None:
    """A name deleted and re-created with a recycled inode number looks unchanged in a listing."""
    conf = hl_conf(tmp_path, V4)
    assert addr(call(hl, "ADD", conf, "c1")) == "10.9.0.2"
    assert addr(call(hl, "ADD", conf, "c1")) == "10.9.0.2"  # this one read it back: inode recorded
    held = tmp_path / "rcnnet" / "10.9.0.2"
    ino = held.stat().st_ino
    assert disk._MEMO[str(tmp_path / "rcnnet")].scan.inodes == {"10.9.0.2": ino}
    with open(held, "r+b") as f:  # same inode, another holder: what recycling would look like
        f.write(b"other\r\neth0")
    assert held.stat().st_ino == ino
    assert addr(call(hl, "ADD", conf, "c1")) == "10.9.0.3"  # not .2, which is other's
    assert files_of(tmp_path / "rcnnet")["10.9.0.2"] == b"other\r\neth0"
    assert addr(call(hl, "ADD", conf, "c1")) == "10.9.0.3"


def test_memo_forgets_own_del_and_half_written_files_are_reclaimed(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, V4)
    net = tmp_path / "rcnnet"
    assert addr(call(hl, "ADD", conf, "c1")) == "10.9.0.2"
    call(hl, "DEL", conf, "c1")
    kept = disk._MEMO.get(str(net))  # DEL keeps its scan for the next call, minus what it released
    assert kept is None or "10.9.0.2" not in kept.scan.owners
    (net / "10.9.0.3").write_bytes(b"")  # a reference killed between create and write
    (net / "last_reserved_ip.0").write_bytes(b"10.9.0.2")
    assert addr(call(hl, "ADD", conf, "c2")) == "10.9.0.3"  # the empty file was not trusted
    assert files_of(net)["10.9.0.3"] == b"c2\r\neth0"


def _writer(conf: dict[str, Any], prefix: str, rounds: int, start: Any, out: Any) -> None:
    """ADD each id twice (the second must return the first's address), DEL every third."""
    from reconciler.plugins.ipam import host_local
    from tests.plugins.ipam.ipamtest import call

    start.wait()
    got: dict[str, str] = {}
    for i in range(rounds):
        cid = f"{prefix}-{i}"
        first = [ip.address for ip in call(host_local, "ADD", conf, cid).ips]
        assert [ip.address for ip in call(host_local, "ADD", conf, cid).ips] == first
        got[cid] = first[0]
        if i % 3 == 2:
            call(host_local, "DEL", conf, f"{prefix}-{i - 1}")
            del got[f"{prefix}-{i - 1}"]
    out.put(got)


def test_in_process_writers_and_the_reference_never_collide(
    tmp_path: Path, ref_bin: Path, fake_netns: str
) -> None:
    conf = hl_conf(tmp_path, [{"subnet": "10.9.32.0/24"}], [{"subnet": "fd00:32::/64"}])
    stdin = json.dumps(conf).encode()
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(conf, f"p{k}", 30, start, out)) for k in range(3)]
    for p in procs:
        p.start()
    start.wait()
    ref_live = []
    for j in range(20):  # the reference interleaves ADDs and DELs with the writers
        proc = subprocess.run(
            [str(ref_bin)], input=stdin, env=env_for("ADD", f"ref{j}", fake_netns), capture_output=True
        )
        assert proc.returncode == 0, proc.stdout
        ref_live.append(f"ref{j}")
        if j % 4 == 3:
            victim = ref_live.pop(0)
            env = env_for("DEL", victim, fake_netns)
            assert subprocess.run([str(ref_bin)], input=stdin, env=env, capture_output=True).returncode == 0
    live: dict[str, str] = {}
    for _ in procs:
        live.update(out.get(timeout=120))
    for p in procs:
        p.join()
        assert p.exitcode == 0
    held = reservations(tmp_path / "rcnnet")
    owners = Counter(cid for cid, _ in held.values())
    assert owners == dict.fromkeys([*live, *ref_live], 2)  # one v4 + one v6 each, nothing leaked
    for cid, address in live.items():
        assert held[address.split("/")[0]] == (cid, "eth0")
    assert not [n for n in os.listdir(tmp_path / "rcnnet") if n.startswith(disk.TMP_PREFIX)]


def test_del_follows_the_file_not_a_stale_memo(tmp_path: Path) -> None:
    """DEL reads its view before the lock, from the memo: a reservation rewritten behind its back
    (what a recycled inode looks like) is still released for its real holder, and never for the
    memo's."""
    conf = hl_conf(tmp_path, V4)
    net = tmp_path / "rcnnet"
    assert addr(call(hl, "ADD", conf, "c1")) == "10.9.0.2"
    assert addr(call(hl, "ADD", conf, "c1")) == "10.9.0.2"  # the memo now records .2's inode as c1's
    with open(net / "10.9.0.2", "r+b") as f:
        f.write(b"c9\r\neth0")
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.9.0.2/28"}]}
    call(hl, "DEL", dict(conf, prevResult=prev), "c1")
    assert files_of(net)["10.9.0.2"] == b"c9\r\neth0"  # not c1's any more: kept
    call(hl, "DEL", dict(conf, prevResult=prev), "c9")
    assert "10.9.0.2" not in files_of(net)


def test_check_reads_only_prev_results_reservations_and_falls_back(tmp_path: Path) -> None:
    import pytest

    from reconciler.errors import CNIError

    conf = hl_conf(tmp_path, V4)
    net = tmp_path / "rcnnet"
    got = call(hl, "ADD", conf, "c1")
    prev = {"cniVersion": "1.0.0", "ips": [{"address": got.ips[0].address}]}
    call(hl, "CHECK", dict(conf, prevResult=prev), "c1")  # the reservation names c1: passes
    (net / "10.9.0.2").unlink()
    (net / "10.9.0.2").write_bytes(b"c9\r\neth0")
    with pytest.raises(CNIError, match="Failed to find address added by container c1"):
        call(hl, "CHECK", dict(conf, prevResult=prev), "c1")
    assert addr(call(hl, "ADD", conf, "c1")) == "10.9.0.3"
    with pytest.raises(CNIError, match="10.9.0.2 in prevResult is not reserved for c1/eth0"):
        call(hl, "CHECK", dict(conf, prevResult=prev), "c1")


def _listings(monkeypatch: Any) -> list[int]:
    """Count full directory listings (DiskStore._list), calling through to the real one."""
    calls: list[int] = []
    real = disk.DiskStore._list

    def counted(self: disk.DiskStore, memo: Any, *, locked: bool) -> Any:
        calls.append(1)
        return real(self, memo, locked=locked)

    monkeypatch.setattr(disk.DiskStore, "_list", counted)
    return calls


def test_repeated_adds_follow_changes_without_listing_the_store(
    tmp_path: Path, ref_bin: Path, fake_netns: str, monkeypatch: Any
) -> None:
    """From the third ADD on, the memo is brought up to date from the watch's change list alone, and
    still sees what others did: a reservation released and re-created for someone else (its inode
    number may be recycled), the reference's ADDs, and its own files."""
    conf = hl_conf(tmp_path, V4)
    net = tmp_path / "rcnnet"
    listings = _listings(monkeypatch)
    for i in range(3):
        call(hl, "ADD", conf, f"c{i}")  # .2 .3 .4; the second ADD armed the watch
    assert disk._MEMO[str(net)].watch is not None
    before = len(listings)
    (net / "10.9.0.3").unlink()  # c1's reservation now belongs to x2
    (net / "10.9.0.3").write_bytes(b"x2\r\neth0")
    assert addr(call(hl, "ADD", conf, "x2")) == "10.9.0.3"  # ADD is idempotent: found, not a new one
    stdin = json.dumps(conf).encode()
    proc = subprocess.run([str(ref_bin)], input=stdin, env=env_for("ADD", "r1", fake_netns), capture_output=True)
    assert json.loads(proc.stdout)["ips"][0]["address"] == "10.9.0.5/28"
    assert addr(call(hl, "ADD", conf, "r1")) == "10.9.0.5"
    assert addr(call(hl, "ADD", conf, "c3")) == "10.9.0.6"
    assert len(listings) == before  # no listing since the watch was armed
    assert reservations(net) == {
        "10.9.0.2": ("c0", "eth0"), "10.9.0.3": ("x2", "eth0"), "10.9.0.4": ("c2", "eth0"),
        "10.9.0.5": ("r1", "eth0"), "10.9.0.6": ("c3", "eth0"),
    }


def test_a_forked_child_does_not_take_the_parents_changes(tmp_path: Path, ref_bin: Path, fake_netns: str) -> None:
    """The engine's workers are forks of a process with a watch: a child lists the store itself, and
    the parent still learns of everything the child and others did."""
    conf = hl_conf(tmp_path, V4)
    for i in range(3):
        call(hl, "ADD", conf, f"p{i}")  # .2 .3 .4, watch armed
    pid = os.fork()
    if pid == 0:
        try:
            got = [addr(call(hl, "ADD", conf, f"k{i}")) for i in range(3)]
            os._exit(0 if got == ["10.9.0.5", "10.9.0.6", "10.9.0.7"] else 1)
        except BaseException:  # noqa: BLE001 - any failure is the child's exit code
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    stdin = json.dumps(conf).encode()
    proc = subprocess.run([str(ref_bin)], input=stdin, env=env_for("ADD", "r1", fake_netns), capture_output=True)
    assert json.loads(proc.stdout)["ips"][0]["address"] == "10.9.0.8/28"
    assert addr(call(hl, "ADD", conf, "k1")) == "10.9.0.6"  # the child's, found by its owner
    assert addr(call(hl, "ADD", conf, "r1")) == "10.9.0.8"
    assert addr(call(hl, "ADD", conf, "p3")) == "10.9.0.9"
