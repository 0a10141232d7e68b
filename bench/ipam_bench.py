"""host-local allocation throughput: ours in-process, ours exec'd, the reference exec'd.

Single writer and 8 concurrent writers on one network store each; prints
allocations/s and the ratios to the reference, and writes
bench/results/ipam.json. Needs no root; the store lives in a temporary
directory on the same filesystem as /var/tmp (fsyncs are real).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import REFERENCE, cni_env, exec_timed, write_results  # noqa: E402

WRITERS = 8


def net_conf(data_dir: str, name: str) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": "10.200.0.0/16"}]]},
    }


def inproc_worker(conf: dict, prefix: str, count: int, start_at: float) -> int:
    """Allocate `count` addresses in this process (the engine's in-process path)."""
    from reconciler.cni.args import CmdArgs
    from reconciler.plugins.ipam import host_local

    stdin = json.dumps(conf).encode()
    while time.time() < start_at:
        time.sleep(0.001)
    for i in range(count):
        host_local.add(CmdArgs.build("ADD", stdin, container_id=f"{prefix}-{i}", ifname="eth0", netns="/x"))
    return count


def run_inproc(conf: dict, writers: int, per_writer: int) -> float:
    if writers == 1:
        inproc_worker(conf, "warmup", 1, 0)  # imports outside the timed region
        start = time.perf_counter()
        inproc_worker(conf, "s", per_writer, 0)
        return per_writer / (time.perf_counter() - start)
    ctx = multiprocessing.get_context("fork")
    start_at = time.time() + 1.0
    procs = [
        ctx.Process(target=inproc_worker, args=(conf, f"w{k}", per_writer, start_at)) for k in range(writers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"in-process writer failed: {p.exitcode}")
    return writers * per_writer / (time.time() - start_at)


def run_exec(binary: str, conf: dict, writers: int, per_writer: int, netns_path: str) -> float:
    stdin = json.dumps(conf).encode()
    extra = {"RECONCILER_PLUGIN_SOCKET": os.devnull}  # cold: no warm-path daemon

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller counts (a smoke run)")
    opts = parser.parse_args()
    scale = 0.2 if opts.quick else 1.0

    def n(value: int) -> int:
        return max(2, int(value * scale))

    counts = {
        ("ours in-process", 1): n(2000),
        ("ours in-process", WRITERS): n(300),
        ("ours exec'd", 1): n(60),
        ("ours exec'd", WRITERS): n(12),
        ("reference exec'd", 1): n(400),
        ("reference exec'd", WRITERS): n(60),
    }
    rates: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ipambench", dir="/var/tmp") as tmp:
        netns_path = os.path.join(tmp, "netns")
        Path(netns_path).touch()
        from reconciler.launcher import install

        bindir = os.path.join(tmp, "bin")
        os.mkdir(bindir)
        install(bindir)
        binaries = {
            "ours exec'd": os.path.join(bindir, "host-local"),
            "reference exec'd": str(REFERENCE / "host-local"),
        }
        for (impl, writers), count in counts.items():
            if impl == "reference exec'd" and not Path(binaries[impl]).exists():
                continue
            conf = net_conf(os.path.join(tmp, "data"), f"{impl.split()[0]}{impl.split()[1][:4]}{writers}")
            per_writer = max(1, count // writers) if writers > 1 else count
            if impl == "ours in-process":
                rate = run_inproc(conf, writers, per_writer)
            else:
                rate = run_exec(binaries[impl], conf, writers, per_writer, netns_path)
            rates.setdefault(impl, {})[f"{writers}w"] = round(rate, 1)
            print(
                f"{impl:18} {writers} writer(s): {rate:9.1f} allocations/s  ({per_writer * writers} allocations)"
            )
    ratios = {}
    ref = rates.get("reference exec'd")
    if ref:
        for impl in ("ours in-process", "ours exec'd"):
            for key in ("1w", f"{WRITERS}w"):
                ratios[f"{impl} / reference, {key}"] = round(rates[impl][key] / ref[key], 3)
        for label, value in ratios.items():
            print(f"{label:40} {value:8.3f}x")
    path = write_results(
        "ipam", {"allocations_per_second": rates, "ratios_to_reference": ratios, "quick": opts.quick}
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
