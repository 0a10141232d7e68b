"""bridge + host-local ADD/DEL latency: reference vs ours (exec'd cold, exec'd warm, in-process).

Everything runs inside a private namespace standing in for the host, over N
sequential attachments on one bridge per implementation. Prints p50/p95 and
the ratios ours/reference; writes bench/results/plugin_latency.json.
Run as root: `.venv/bin/python bench/plugin_latency.py [-n 50]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import PYTHON, REFERENCE, ROOT, cni_env, exec_timed, netns, summary, write_results  # noqa: E402


def conf(bridge: str, subnet: str, data_dir: str) -> bytes:
    return json.dumps({
        "cniVersion": "1.0.0", "name": f"bench-{bridge}", "type": "bridge", "bridge": bridge, "isGateway": True,
        "ipam": {"type": "host-local", "subnet": subnet, "dataDir": data_dir},
    }).encode()


def run_series(binary: str, cni_path: str, stdin: bytes, containers: list[str], extra: dict[str, str]) -> dict:
    adds, dels = [], []
    for i, ns in enumerate(containers):
        t, code, out = exec_timed(binary, cni_env("ADD", f"/run/netns/{ns}", f"c{i}", cni_path, extra=extra), stdin)
        if code != 0:
            raise SystemExit(f"{binary} ADD failed: {out.decode()}")
        adds.append(t)
    for i, ns in enumerate(containers):
        t, code, out = exec_timed(binary, cni_env("DEL", f"/run/netns/{ns}", f"c{i}", cni_path, extra=extra), stdin)
        if code != 0:
            raise SystemExit(f"{binary} DEL failed: {out.decode()}")
        dels.append(t)
    return {"add": summary(adds), "del": summary(dels)}


INPROCESS = r"""
import json, os, sys, time
from reconciler.cni.skel import run
stdin = sys.stdin.buffer.read()
names = json.loads(os.environ["BENCH_NETNS"])
adds, dels = [], []
for verb, bucket in (("ADD", adds), ("DEL", dels)):
    for i, ns in enumerate(names):
        env = dict(os.environ, CNI_COMMAND=verb, CNI_NETNS=f"/run/netns/{ns}", CNI_CONTAINERID=f"c{i}",
                   CNI_IFNAME="eth0", CNI_PATH=os.environ["BENCH_CNI_PATH"])
        t = time.perf_counter()
        code, out = run("bridge", env, stdin)
        bucket.append(time.perf_counter() - t)
        assert code == 0, out
print(json.dumps({"add": adds, "del": dels}))
"""


def inner(n: int) -> dict:
    from bench.common import summary as summ

    results: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="rcn-bench-"))
    bindir = tmp / "bin"
    subprocess.run([PYTHON, "-m", "reconciler", "plugins", "install", str(bindir)], check=True, capture_output=True)
    sock = tmp / "run" / "plugin.sock"
    impls = [
        ("reference", str(REFERENCE / "bridge"), str(REFERENCE), {}),
        ("ours-cold", str(bindir / "bridge"), str(bindir), {"RECONCILER_NO_WARM": "1"}),
        ("ours-warm", str(bindir / "bridge"), str(bindir), {"RECONCILER_PLUGIN_SOCKET": str(sock)}),
    ]
    daemon = subprocess.Popen([PYTHON, "-m", "reconciler", "serve", "--socket", str(sock)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for index, (label, binary, cni_path, extra) in enumerate(impls + [("ours-inprocess", "", str(bindir), {})]):
            names = []
            try:
                for _ in range(n):
                    name = f"rcnb{index}x{len(names)}{os.getpid()}"
                    subprocess.run(["ip", "netns", "add", name], check=True)
                    names.append(name)
                stdin = conf(f"rcnbbr{index}", f"10.{90 + index}.0.0/16", str(tmp / f"ipam{index}"))
                if label == "ours-inprocess":
                    proc = subprocess.run(
                        [PYTHON, "-c", INPROCESS], input=stdin, capture_output=True, cwd=ROOT,
                        env=dict(os.environ, BENCH_NETNS=json.dumps(names), BENCH_CNI_PATH=cni_path),
                    )
                    if proc.returncode != 0:
                        raise SystemExit(proc.stderr.decode())
                    raw = json.loads(proc.stdout)
                    results[label] = {"add": summ(raw["add"]), "del": summ(raw["del"])}
                else:
                    results[label] = run_series(binary, cni_path, stdin, names, extra)
            finally:
                for name in names:
                    subprocess.run(["ip", "netns", "delete", name], check=False)
                subprocess.run(["ip", "link", "del", f"rcnbbr{index}"], check=False, capture_output=True)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=20)
        shutil.rmtree(tmp, ignore_errors=True)  # the installed plugins, the daemon's socket, the stores
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(inner(args.n)))
        return 0
    with netns("rcnbh") as host:
        proc = subprocess.run(["ip", "netns", "exec", host, PYTHON, __file__, "--inner", "-n", str(args.n)],
                              capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 1
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = results["reference"]
    print(f"bridge + host-local, {args.n} sequential attachments on one bridge (ms)")
    print(f"{'impl':<16}{'ADD p50':>9}{'ADD p95':>9}{'DEL p50':>9}{'DEL p95':>9}{'ADD/ref':>9}{'DEL/ref':>9}")
    for label, r in results.items():
        print(f"{label:<16}{r['add']['p50_ms']:9.1f}{r['add']['p95_ms']:9.1f}{r['del']['p50_ms']:9.1f}"
              f"{r['del']['p95_ms']:9.1f}{r['add']['p50_ms'] / ref['add']['p50_ms']:9.2f}"
              f"{r['del']['p50_ms'] / ref['del']['p50_ms']:9.2f}")
    from bench.floors import python_import

    floor = python_import()
    ref_add = ref["add"]["p50_ms"] / 1000
    print(f"floor of a cold exec'd Python plugin (bench.floors.python_import, p50): interpreter "
          f"{floor['interpreter_s'] * 1000:.1f} ms, with pydantic and one model "
          f"{floor['interpreter_pydantic_s'] * 1000:.1f} ms = reference ADD x {floor['interpreter_pydantic_s'] / ref_add:.1f}")
    write_results("plugin_latency", {"n": args.n, "results": results, "floor_s": floor})
    return 0


if __name__ == "__main__":
    sys.exit(main())
