"""Shared pieces of the benchmarks: private namespaces, exec'd plugin timing, percentiles, output."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
REFERENCE = Path("/usr/lib/cni")
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def machine() -> dict[str, str | int]:
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count() or 0,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": percentile(values, 50) * 1000,
        "p95_ms": percentile(values, 95) * 1000,
        "mean_ms": statistics.fmean(values) * 1000 if values else float("nan"),
    }


@contextlib.contextmanager
def netns(prefix: str = "rcnb") -> Iterator[str]:
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def parallel_rate(target: Callable[..., object], args: list[tuple], total: int) -> float:
    """Operations/s of `target(*a, barrier)` in one forked process per `a`, timed between the barrier's two
    waits (each target waits once before its work and once after), `total` operations in all."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(len(args) + 1)
    procs = [ctx.Process(target=target, args=(*a, barrier)) for a in args]
    for proc in procs:
        proc.start()
    barrier.wait()
    start = time.perf_counter()
    barrier.wait()
    elapsed = time.perf_counter() - start
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"{getattr(target, '__name__', target)} failed in a writer: exit {proc.exitcode}")
    return total / elapsed


def write_results(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=1))
    return path


def exec_timed(binary: str, env: dict[str, str], stdin: bytes) -> tuple[float, int, bytes]:
    start = time.perf_counter()
    proc = subprocess.run([binary], input=stdin, env=env, capture_output=True)
    return time.perf_counter() - start, proc.returncode, proc.stdout


def cni_env(command: str, netns_path: str, container_id: str, cni_path: str, ifname: str = "eth0",
            extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(CNI_COMMAND=command, CNI_NETNS=netns_path, CNI_CONTAINERID=container_id, CNI_IFNAME=ifname,
               CNI_PATH=cni_path)
    env.update(extra or {})
    return env
