"""Floors: what this machine charges for the work itself, whoever does it.

Each benchmark measures one floor next to its figures, in the same run, so a
missed target can be told apart from a slow implementation:

- `kernel_converge`: the bare kernel objects of N bridge attachments as the
  benchmark's network makes them (a namespace with lo up, a veth pair created
  enslaved and up, the container end up with its address; `isGateway` without
  routes adds no route), built with our kernel layer and nothing else: no IPAM,
  no cache, no records, no verification, no sysctls. Split over the engine's
  processes the same way (`engine.workers.fork_map`).
- `python_import`: an interpreter that starts like the cold path (`-SE`) and
  imports pydantic with a model class: what any cold exec'd plugin built on
  pydantic pays before it reads stdin.
- `durable_reservations`: host-local's durable write alone, per allocation
  (an O_TMPFILE written, linked to its name and fsync'd, the directory
  fsync'd), in the store's directory, 1 or more processes.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from bench.common import PYTHON, ROOT, parallel_rate, percentile

SITE_PACKAGES = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"), None)


def _build_attachments(prefix: str, host_prefix: str, bridge_index: int, indices: list[int],
                       subnet_octet: int) -> int:
    from reconciler.kernel import addrs, links, namespaces, rtnl

    with namespaces.session():
        for i in indices:
            path = f"/run/netns/{prefix}{i}"
            namespaces.create(f"{prefix}{i}")
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                rtnl.create_veth(None, f"{host_prefix}{i}", "eth0", peer_netns_fd=fd, mtu=None, mac=None,
                                 peer_mac=None, master=bridge_index, up=True)
            finally:
                os.close(fd)
            links.set_up("eth0", path)
            addrs.add("eth0", f"10.{subnet_octet}.{i // 250}.{i % 250 + 2}/16", path)
    return len(indices)


def kernel_converge(n: int, workers: int, tag: str, subnet_octet: int = 249) -> float:
    """Seconds to build the kernel objects of `n` bridge attachments over `workers` processes.

    Runs in the caller's (private) namespace; removes everything it made before returning.
    """
    from reconciler.engine.workers import fork_map
    from reconciler.kernel import links, namespaces

    prefix, bridge = f"rcn-fl{tag}-", f"rcnfl{tag}"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        subprocess.run(["ip", "addr", "add", f"10.{subnet_octet}.255.1/16", "dev", bridge], check=True)
        index = links.get(bridge).index
        parts = [list(range(n))[k::workers] for k in range(max(1, min(workers, n)))]
        start = time.perf_counter()
        done = fork_map(parts, lambda part: _build_attachments(prefix, f"{bridge}x", index, part, subnet_octet))
        elapsed = time.perf_counter() - start
        if sum(d for d in done if isinstance(d, int)) != n:
            raise RuntimeError(f"kernel floor: a worker failed: {done}")
        return elapsed
    finally:
        for name in namespaces.list_names():
            if name.startswith(prefix):
                namespaces.delete(name)
        subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)


def python_import(runs: int = 15) -> dict[str, float]:
    """p50 seconds: the bare interpreter as the cold path starts it, and with pydantic and one model."""
    site = str(SITE_PACKAGES)
    codes = {
        "interpreter_s": "pass",
        "interpreter_pydantic_s": f"import sys; sys.path.insert(0, {site!r}); import pydantic\n"
                                  "class M(pydantic.BaseModel):\n    x: int = 0\nM(x=1)",
    }
    out = {}
    for key, code in codes.items():
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run([PYTHON, "-SE", "-c", code], check=True)
            times.append(time.perf_counter() - start)
        out[key] = percentile(times, 50)
    return out


def _durable_writes(directory: str, count: int, barrier: object | None = None) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    data = b"container-id-0123456789abcdef\r\neth0"
    if barrier is not None:
        barrier.wait()  # type: ignore[attr-defined]
    try:
        for i in range(count):
            fd = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            try:
                os.write(fd, data)
                os.link(f"/proc/self/fd/{fd}", f"{os.getpid()}-{i}", dst_dir_fd=dir_fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    if barrier is not None:
        barrier.wait()  # type: ignore[attr-defined]


def durable_reservations(directory: str, writers: int, count: int) -> float:
    """Durable reservation writes per second in `directory` (created fresh under it), `writers` processes."""
    work = Path(directory) / f"floor-{os.getpid()}-{writers}"
    work.mkdir()
    per = max(1, count // writers)
    if writers == 1:
        start = time.perf_counter()
        _durable_writes(str(work), per)
        return per / (time.perf_counter() - start)
    return parallel_rate(_durable_writes, [(str(work), per)] * writers, writers * per)
