"""portmap ADD/DEL latency, ours vs the reference, and rule-count growth over 200 attachments.

Each implementation works in its own private namespace standing in for the host (plugins
are run with `ip netns exec`, which adds the same few ms to both sides). The container side
is not needed by portmap: prevResult names an address routed through a veth in the host
namespace. Ours runs with `backend: iptables` (the reference v1.1.1 is iptables-only; it
writes through iptables-nft here, ours through iptables-legacy), exec'd cold, plus our
exec'd with our plugin daemon (warm: `reconciler serve` on a private socket, run inside the
same host namespace, as a host's daemon is), and called
in-process. CPU time of the warm exec'd side excludes the daemon's share. Wall time is reported with the CPU time it cost (the
plugin processes' user+sys, or this process's for in-process calls): on a busy machine wall
time mostly measures the scheduler. Writes bench/results/portmap.json.
Run as root: `.venv/bin/python bench/portmap_bench.py [--repeat 5] [--attachments 200]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import REFERENCE, cni_env, netns, summary, write_results  # noqa: E402


def prev_result(index: int) -> dict:
    return {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": f"/run/netns/c{index}"}],
            "ips": [{"address": f"10.250.{index // 250}.{index % 250 + 2}/16", "gateway": "10.250.0.1",
                     "interface": 0}]}


def conf(index: int, ports: int, base_port: int, ours: bool) -> bytes:
    mappings = [{"hostPort": base_port + i, "containerPort": 80 + i, "protocol": "tcp"} for i in range(ports)]
    data = {"cniVersion": "1.0.0", "name": "benchpm", "type": "portmap", "capabilities": {"portMappings": True},
            "runtimeConfig": {"portMappings": mappings}, "prevResult": prev_result(index)}
    if ours:
        data["backend"] = "iptables"
    return json.dumps(data).encode()


def prepare(host: str) -> None:
    cmds = [["ip", "link", "add", "rcnbv0", "type", "veth", "peer", "name", "rcnbv1"],
            ["ip", "addr", "add", "10.250.0.1/16", "dev", "rcnbv0"],
            ["ip", "link", "set", "rcnbv0", "up"], ["ip", "link", "set", "rcnbv1", "up"]]
    for cmd in cmds:
        subprocess.run(["ip", "netns", "exec", host, *cmd], check=True)


EXTRA_ENV: dict[str, str] = {}  # per side: cold (no daemon) or warm (our plugin daemon)


def call(binary: Path, command: str, host: str, index: int, stdin: bytes) -> float:
    env = cni_env(command, f"/run/netns/{host}", f"ctr{index}", str(REFERENCE), extra=EXTRA_ENV)  # existing netns
    t, code, out = _exec(binary, env, stdin, host)
    if code != 0:
        raise SystemExit(f"{binary} {command} failed: {out.decode()}")
    return t


CPU: list[float] = []  # CPU seconds of the last call (children's for exec'd plugins)


def _exec(binary: Path, env: dict[str, str], stdin: bytes, host: str) -> tuple[float, int, bytes]:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(["ip", "netns", "exec", host, str(binary)], input=stdin, env=env, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall, proc.returncode, proc.stdout + proc.stderr


def in_process(command: str, host: str, index: int, stdin: bytes) -> float:
    from reconciler.cni.args import CmdArgs
    from reconciler.plugins.meta import portmap

    args = CmdArgs.build(command, stdin, container_id=f"ctr{index}", netns=f"/run/netns/c{index}", ifname="eth0",
                         path=str(REFERENCE), host_netns=host)
    start = time.perf_counter()
    cpu = time.process_time()
    if command == "ADD":
        portmap.add(args)
    else:
        portmap.delete(args)
    CPU.append(time.process_time() - cpu)
    return time.perf_counter() - start


@contextlib.contextmanager
def daemon_in(host: str) -> Iterator[None]:
    """For the warm side, our daemon inside `host`: where the runtime calling the plugins runs (a daemon
    in another namespace serves each request from a child forked into the caller's namespace)."""
    sock = EXTRA_ENV.get("RECONCILER_PLUGIN_SOCKET")
    if not sock:
        yield
        return
    proc = subprocess.Popen(["ip", "netns", "exec", host, sys.executable, "-m", "reconciler", "serve", "--socket", sock])
    try:
        deadline = time.monotonic() + 60
        while not Path(sock).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def latency(binary: Path | None, ours: bool, repeat: int) -> dict:
    out = {}
    for ports in (1, 10, 100):
        with netns("rcnbh") as host, daemon_in(host):
            prepare(host)
            adds, dels, add_cpu, del_cpu = [], [], [], []
            if binary is None:  # warm path: imports done once, as in the daemon
                in_process("ADD", host, 999, conf(999, 1, 30000, ours))
                in_process("DEL", host, 999, conf(999, 1, 30000, ours))
            for r in range(repeat):
                stdin = conf(r, ports, 20000, ours)
                if binary is None:
                    adds.append(in_process("ADD", host, r, stdin))
                    add_cpu.append(CPU[-1])
                    dels.append(in_process("DEL", host, r, stdin))
                    del_cpu.append(CPU[-1])
                else:
                    adds.append(call(binary, "ADD", host, r, stdin))
                    add_cpu.append(CPU[-1])
                    dels.append(call(binary, "DEL", host, r, stdin))
                    del_cpu.append(CPU[-1])
        out[str(ports)] = {"add": summary(adds), "del": summary(dels), "add_cpu": summary(add_cpu),
                           "del_cpu": summary(del_cpu)}
    return out


def growth(binary: Path | None, ours: bool, attachments: int) -> dict:
    with netns("rcnbh") as host, daemon_in(host):
        prepare(host)
        adds, cpu = [], []
        if binary is None:
            in_process("ADD", host, 999, conf(999, 1, 30000, ours))
            in_process("DEL", host, 999, conf(999, 1, 30000, ours))
        start = time.perf_counter()
        for i in range(attachments):
            stdin = conf(i, 1, 20000 + i, ours)
            adds.append(in_process("ADD", host, i, stdin) if binary is None else call(binary, "ADD", host, i, stdin))
            cpu.append(CPU[-1])
        total = time.perf_counter() - start
    k = max(1, attachments // 10)
    return {"attachments": attachments, "total_s": total, "cpu_s": sum(cpu), "first_10pct": summary(adds[:k]),
            "last_10pct": summary(adds[-k:]), "first_10pct_cpu": summary(cpu[:k]), "last_10pct_cpu": summary(cpu[-k:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--attachments", type=int, default=200)
    parser.add_argument("--skip-growth", action="store_true")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        from reconciler.launcher import install

        install(Path(tmp))
        sock = Path(tmp) / "run" / "plugin.sock"
        sides = {"reference": (REFERENCE / "portmap", False, {}),
                 "ours_exec_cold": (Path(tmp) / "portmap", True, {"RECONCILER_NO_WARM": "1"}),
                 "ours_exec_warm": (Path(tmp) / "portmap", True, {"RECONCILER_PLUGIN_SOCKET": str(sock)}),
                 "ours_inprocess": (None, True, {})}
        results: dict = {"latency": {}, "growth": {}}
        for name, (binary, ours, env) in sides.items():
            EXTRA_ENV.clear()
            EXTRA_ENV.update(env)
            results["latency"][name] = latency(binary, ours, opts.repeat)
            for ports, row in results["latency"][name].items():
                print(f"{name:15s} {ports:>3s} mappings  ADD p50 {row['add']['p50_ms']:7.1f} ms "
                      f"(cpu {row['add_cpu']['p50_ms']:6.1f})  DEL p50 {row['del']['p50_ms']:7.1f} ms "
                      f"(cpu {row['del_cpu']['p50_ms']:6.1f})", flush=True)
        if not opts.skip_growth:
            for name, (binary, ours, env) in sides.items():
                EXTRA_ENV.clear()
                EXTRA_ENV.update(env)
                row = growth(binary, ours, opts.attachments)
                results["growth"][name] = row
                print(f"{name:15s} {row['attachments']} attachments: {row['total_s']:.2f} s total "
                      f"(cpu {row['cpu_s']:.2f} s), ADD p50 first {row['first_10pct']['p50_ms']:.1f} ms -> "
                      f"last {row['last_10pct']['p50_ms']:.1f} ms (cpu {row['first_10pct_cpu']['p50_ms']:.1f}"
                      f" -> {row['last_10pct_cpu']['p50_ms']:.1f})", flush=True)
    print(write_results("portmap", results))


if __name__ == "__main__":
    main()
