"""host-local allocation throughput: ours in-process, ours exec'd (cold and warm), the reference exec'd.

One and 4 concurrent writers (the issue's figure; `--writers 1,4,8` adds 8)
on one network store each; prints allocations/s (the median of 3 rounds in
which the implementations take turns) and the ratios to the reference, and
writes bench/results/ipam.json. An in-process writer is a
process calling the plugin module in a loop (the analogue of one runtime); an
exec'd writer is a thread exec'ing the binary. Needs no root; the store lives
in a temporary directory on /var/tmp (disk: fsyncs are real) or /dev/shm.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import PYTHON, REFERENCE, ROOT, cni_env, exec_timed, parallel_rate, write_results  # noqa: E402

WRITERS = (1, 4)
COLD_MAX = 16


def net_conf(data_dir: str, name: str) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": "10.200.0.0/16"}]]},
    }


def inproc_worker(conf: dict, prefix: str, count: int, barrier: Any = None) -> int:
    """Allocate `count` addresses in this process (the engine's in-process path)."""
    from reconciler.cni.args import CmdArgs
    from reconciler.plugins.ipam import host_local

    stdin = json.dumps(conf).encode()
    if barrier is not None:
        barrier.wait()  # imports done: start together
    for i in range(count):
        host_local.add(CmdArgs.build("ADD", stdin, container_id=f"{prefix}-{i}", ifname="eth0", netns="/x"))
    if barrier is not None:
        barrier.wait()
    return count


def run_inproc(conf: dict, writers: int, per_writer: int) -> float:
    if writers == 1:
        inproc_worker(conf, "warmup", 1)  # imports outside the timed region
        start = time.perf_counter()
        inproc_worker(conf, "s", per_writer)
        return per_writer / (time.perf_counter() - start)
    return parallel_rate(inproc_worker, [(conf, f"w{k}", per_writer) for k in range(writers)], writers * per_writer)


def run_exec(binary: str, conf: dict, writers: int, per_writer: int, netns_path: str, sock: str) -> float:
    """Exec `binary` per allocation; `sock` is the warm-path socket (os.devnull: cold, no daemon)."""
    stdin = json.dumps(conf).encode()
    extra = {"RECONCILER_PLUGIN_SOCKET": sock}

    def writer(k: int) -> int:
        for i in range(per_writer):
            env = cni_env("ADD", netns_path, f"x{k}-{i}", str(Path(binary).parent), extra=extra)
            _, code, out = exec_timed(binary, env, stdin)
            if code != 0:
                raise RuntimeError(f"{binary} ADD failed: {out[:300]!r}")
        return per_writer

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=writers) as pool:
        total = sum(pool.map(writer, range(writers)))
    return total / (time.perf_counter() - start)


STORES = {"disk": "/var/tmp", "tmpfs": "/dev/shm"}
IMPLS = ("ours in-process", "ours exec'd", "ours exec'd warm", "reference exec'd")


@contextlib.contextmanager
def warm_daemon(directory: str) -> Iterator[str | None]:
    """`reconciler serve` on a private socket; yields its path, or None if it did not come up."""
    sock = os.path.join(directory, "warm.sock")
    proc = subprocess.Popen(
        [PYTHON, "-m", "reconciler", "serve", "--socket", sock],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(sock) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        yield sock if os.path.exists(sock) else None
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def counts_for(impl: str, count: int, writers: int) -> int:
    """Allocations per writer: `count` in all, fewer for the cold exec'd path (~1 s each under load)."""
    total = min(count, COLD_MAX) if impl == "ours exec'd" else count
    return max(1, total // writers)


def measure(tmp: str, count: int, writer_counts: list[int], impls: list[str],
            rounds: int) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, list[float]]]]:
    """allocations/s per implementation and writer count (the median of `rounds` runs; the cold
    exec'd path runs once), each run on a fresh store in directory `tmp` (which the caller removes);
    and the runs' samples. The implementations take turns round by round: on this VM's journal-less
    ext4 a new file costs more the more files were deleted in the last minutes (bench/README.md), a
    cost that drifts within a run, so each side's runs are spread over the same minutes."""
    samples: dict[str, dict[str, list[float]]] = {}
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(warm_daemon(tmp)) if "ours exec'd warm" in impls else None
        netns_path = os.path.join(tmp, "netns")
        Path(netns_path).touch()
        from reconciler.launcher import install

        bindir = os.path.join(tmp, "bin")
        os.mkdir(bindir)
        install(bindir)
        ours = os.path.join(bindir, "host-local")
        binaries = {
            "ours exec'd": ours,
            "ours exec'd warm": ours,
            "reference exec'd": str(REFERENCE / "host-local"),
        }
        if "ours exec'd warm" in impls and sock is None:
            print("  (warm-path daemon did not start; skipping the warm exec'd figures)")
        for round_no in range(rounds):
            for impl in impls:
                if impl == "reference exec'd" and not Path(binaries[impl]).exists():
                    continue
                if (impl == "ours exec'd warm" and sock is None) or (impl == "ours exec'd" and round_no):
                    continue
                for writers in writer_counts:
                    conf = net_conf(os.path.join(tmp, "data"), f"n{IMPLS.index(impl)}w{writers}r{round_no}")
                    per_writer = counts_for(impl, count, writers)
                    if impl == "ours in-process":
                        rate = run_inproc(conf, writers, per_writer)
                    else:
                        path = sock if impl == "ours exec'd warm" and sock else os.devnull
                        rate = run_exec(binaries[impl], conf, writers, per_writer, netns_path, path)
                    samples.setdefault(impl, {}).setdefault(f"{writers}w", []).append(round(rate, 1))
                    print(f"  round {round_no + 1}: {impl:18} {writers} writer(s): {rate:9.1f} allocations/s"
                          f"  ({per_writer * writers} allocations)", flush=True)
    rates = {impl: {key: round(statistics.median(values), 1) for key, values in by_key.items()}
             for impl, by_key in samples.items()}
    return rates, samples


def durable_floor(base: str, count: int, writer_counts: list[int], ref: dict[str, float]) -> dict[str, float]:
    """bench.floors.durable_reservations per writer count: the store's fsyncs alone, in allocations/s."""
    from bench.floors import durable_reservations

    floor: dict[str, float] = {}
    directory = tempfile.mkdtemp(prefix="floor", dir=base)  # removed with `base`
    for writers in writer_counts:
        key = f"{writers}w"
        floor[key] = round(durable_reservations(directory, writers, count), 1)
        versus = f" = reference x {floor[key] / ref[key]:.1f}" if ref.get(key) else ""
        print(f"  floor: durable reservation writes alone, {writers} writer(s): {floor[key]:9.1f}/s{versus}",
              flush=True)
    return floor


def ratios_of(rates: dict[str, dict[str, float]]) -> dict[str, float]:
    ref = rates.get("reference exec'd")
    out: dict[str, float] = {}
    if not ref:
        return out
    for impl in IMPLS[:-1]:
        for key, value in rates.get(impl, {}).items():
            if key in ref:
                out[f"{impl} / reference, {key}"] = round(value / ref[key], 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    parser.add_argument("--store", choices=sorted(STORES), action="append", help="default: both")
    parser.add_argument(
        "--writers", default=",".join(map(str, WRITERS)), help="comma list of writer counts (default 1,4)"
    )
    parser.add_argument(
        "--count",
        type=int,
        help=f"allocations per run, split across writers (default 480, quick 40; cold exec'd at most {COLD_MAX})",
    )
    parser.add_argument("--impl", choices=IMPLS, action="append", help="default: all")
    parser.add_argument("--rounds", type=int, help="runs per figure, the sides taking turns; the median is "
                        "reported (default 3, quick 1; the cold exec'd path runs once)")
    opts = parser.parse_args()
    count = opts.count or (40 if opts.quick else 480)
    rounds = opts.rounds or (1 if opts.quick else 3)
    writer_counts = [int(w) for w in opts.writers.split(",") if w.strip()]
    impls = [impl for impl in IMPLS if impl in (opts.impl or IMPLS)]
    results: dict[str, dict] = {}
    for store in opts.store or ["disk", "tmpfs"]:
        if not os.path.isdir(STORES[store]):
            continue
        print(f"store on {store} ({STORES[store]}): {count} allocations per run, writers {writer_counts}")
        # One directory for the store's runs and its floor, removed after both: on a journal-less
        # ext4 (this VM's root) every file created in the minutes after many were deleted costs
        # more (bench/README.md), so nothing is deleted between the runs and the floor.
        with tempfile.TemporaryDirectory(prefix="ipambench", dir=STORES[store]) as tmp:
            rates, samples = measure(tmp, count, writer_counts, impls, rounds)
            ratios = ratios_of(rates)
            for label, value in ratios.items():
                print(f"  {label:40} {value:8.3f}x")
            floor = durable_floor(tmp, count, writer_counts, rates.get("reference exec'd", {}))
        results[store] = {"allocations_per_second": rates, "ratios_to_reference": ratios,
                          "floor_allocations_per_second": floor, "samples": samples}
    path = write_results(
        "ipam",
        {
            "stores": results,
            "allocations_per_run": count,
            "rounds": rounds,
            "cold_exec_allocations_max": COLD_MAX,
            "writers": writer_counts,
            "quick": opts.quick,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
