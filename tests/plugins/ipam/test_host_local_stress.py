"""Concurrency and crashes: many writers (ours exec'd and the reference) on one store, SIGKILL at random."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from reconciler.plugins.ipam.host_local.disk import TMP_PREFIX, parse_owner
from tests.plugins.ipam.ipamtest import files_of, hl_conf

RANGE_SIZE = 40  # 10.9.10.2 - 10.9.10.41


def pool_conf(data_dir: Path) -> dict[str, Any]:
    return hl_conf(
        data_dir,
        [{"subnet": "10.9.10.0/26", "rangeEnd": "10.9.10.41"}],
        [{"subnet": "fd00:10::/64"}],
    )


def env_for(verb: str, cid: str, netns: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(
        CNI_COMMAND=verb,
        CNI_CONTAINERID=cid,
        CNI_NETNS=netns,
        CNI_IFNAME="eth0",
        CNI_PATH="/usr/lib/cni",
        RECONCILER_PLUGIN_SOCKET=os.devnull,
    )
    return env


def reservations(net: Path) -> dict[str, tuple[str, str | None]]:
    out = {}
    for name, data in files_of(net).items():
        if name.startswith("last_reserved_ip.") or name.startswith(TMP_PREFIX):
            continue
        owner = parse_owner(data)
        assert owner is not None, f"untrustworthy reservation {name}: {data!r}"
        out[name] = (owner.container_id, owner.ifname)
    return out


def test_eight_plus_writers_mixed_never_duplicate(tmp_path: Path, ours_bin, ref_bin, fake_netns) -> None:
    conf = json.dumps(pool_conf(tmp_path)).encode()
    jobs = [(f"w{i}", ref_bin if i % 3 == 0 else ours_bin) for i in range(RANGE_SIZE + 8)]

    def add(job: tuple[str, Path]) -> tuple[str, int, Any]:
        cid, binary = job
        proc = subprocess.run(
            [str(binary)], input=conf, env=env_for("ADD", cid, fake_netns), capture_output=True
        )
        return cid, proc.returncode, json.loads(proc.stdout or b"null")

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(add, jobs))
    ok = {cid: out for cid, code, out in results if code == 0}
    failed = [out for _, code, out in results if code != 0]
    assert len(ok) == RANGE_SIZE, failed
    assert all("no IP addresses available" in f["msg"] for f in failed), failed
    v4 = [out["ips"][0]["address"] for out in ok.values()]
    assert len(set(v4)) == RANGE_SIZE
    assert sorted(v4) == sorted(f"10.9.10.{n}/26" for n in range(2, 42))
    held = reservations(tmp_path / "rcnnet")
    assert len(held) == 2 * RANGE_SIZE  # v4 + v6 per container; failed ADDs rolled back both
    assert Counter(cid for cid, _ in held.values()) == dict.fromkeys(ok, 2)
    for cid, out in ok.items():
        for ip in out["ips"]:
            assert held[ip["address"].split("/")[0]] == (cid, "eth0")

    def delete(job: tuple[str, Path]) -> int:
        cid, binary = job
        return subprocess.run(
            [str(binary)], input=conf, env=env_for("DEL", cid, fake_netns), capture_output=True
        ).returncode

    with ThreadPoolExecutor(max_workers=12) as pool:
        assert set(pool.map(delete, [(cid, b) for cid, b in reversed(jobs)])) == {0}
    assert reservations(tmp_path / "rcnnet") == {}


LOOPER = """
import json, sys
from reconciler.cni.args import CmdArgs
from reconciler.plugins.ipam import host_local
conf, prefix = json.loads(sys.argv[1]), sys.argv[2]

def say(line):  # one write(2) per line, even under PYTHONUNBUFFERED (print writes piecemeal)
    sys.stdout.write(line + "\\n")
    sys.stdout.flush()

i = 0
while True:
    cid = f"{prefix}-{i}"
    args = CmdArgs.build("ADD", json.dumps(conf).encode(), container_id=cid, ifname="eth0", netns="/x")
    host_local.add(args)
    if i % 3 == 2:  # churn: release an earlier one too
        old = f"{prefix}-{i - 2}"
        say(f"del {old}")  # announced first: a DEL cut short still means "not live"
        host_local.delete(CmdArgs.build("DEL", args.stdin, container_id=old, ifname="eth0"))
    say(f"add {cid}")
    i += 1
"""


def crash_conf(data_dir: Path) -> dict[str, Any]:
    return hl_conf(data_dir, [{"subnet": "10.9.16.0/20"}], [{"subnet": "fd00:16::/64"}], version="1.1.0")


def test_sigkill_at_random_points_leaves_a_consistent_store(tmp_path: Path, ref_bin, fake_netns) -> None:
    """Writers that do nothing but allocate are SIGKILLed at random instants, alongside the reference."""
    conf = crash_conf(tmp_path)
    ref_conf = json.dumps(conf | {"cniVersion": "1.0.0"}).encode()
    rng = random.Random(4321)
    live: set[str] = set()
    ref_done: list[str] = []
    root = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, "PYTHONPATH": root}
    kills = 0
    for rnd in range(4):
        loopers = [
            subprocess.Popen(
                [sys.executable, "-c", LOOPER, json.dumps(conf), f"r{rnd}w{k}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
            for k in range(7)
        ]
        for j in range(6):  # the 8th writer: the reference binary, between the loopers' allocations
            cid = f"ref{rnd}x{j}"
            proc = subprocess.run(
                [str(ref_bin)], input=ref_conf, env=env_for("ADD", cid, fake_netns), capture_output=True
            )
            assert proc.returncode == 0, proc.stdout
            ref_done.append(cid)
        firsts = []
        for proc in loopers:
            assert proc.stdout is not None
            firsts.append(proc.stdout.readline())  # it is allocating now: kill it mid-flight
            time.sleep(rng.uniform(0.0, 0.15))
            proc.send_signal(signal.SIGKILL)
        for proc, first in zip(loopers, firsts, strict=True):
            assert proc.stdout is not None and proc.stderr is not None
            out = first + proc.stdout.read()  # the same buffered reader: nothing read ahead is lost
            err = proc.stderr.read()
            proc.wait()
            assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
            kills += 1
            lines = out.decode().split("\n")
            for line in lines[:-1]:  # the last is empty, or cut short by the kill: not announced
                verb, cid = line.split()
                if verb == "add":
                    live.add(cid)
                else:
                    live.discard(cid)
        reservations(tmp_path / "rcnnet")  # every file on disk parses, whatever the kill point
    live |= set(ref_done)
    print(f"killed {kills} writers; {len(live)} attachments survived")
    assert kills == 28 and len(live) > 50
    net = tmp_path / "rcnnet"
    held = reservations(net)
    by_owner: dict[str, list[str]] = {}
    for ip, (cid, _) in held.items():
        by_owner.setdefault(cid, []).append(ip)
    for cid in live:
        assert len(by_owner.get(cid, [])) == 2, (cid, by_owner.get(cid))
    gc_conf = conf | {"cni.dev/valid-attachments": [{"containerID": cid, "ifname": "eth0"} for cid in live]}
    from reconciler.plugins.ipam import host_local
    from tests.plugins.ipam.ipamtest import call

    call(host_local, "GC", gc_conf, cid="", ifname="")
    after = reservations(net)
    assert {cid for cid, _ in after.values()} == live
    assert len(after) == 2 * len(live)
    assert not [p for p in net.iterdir() if p.name.startswith(TMP_PREFIX)]
    # and the store still allocates, round-robin intact, to ours and to the reference
    assert call(host_local, "ADD", conf, cid="final").ips[0].address not in {f"{ip}/20" for ip in after}
