"""Engine benchmark: converge 100 and 500 attachments, a no-op pass over each, repair one drifted among 500, teardown.

Side by side, in the same run, with the same work done by the reference Go
plugins (/usr/lib/cni) driven through our chain runner in exec mode, one
attachment at a time (what a runtime does): create the namespace, ADD; CHECK
each for the no-op pass; CHECK each then DEL+ADD the broken one for the repair.
Everything happens inside a private namespace standing in for the host.
The smaller sizes run ROUNDS converge / no-op / teardown cycles on each side and
report the median of each (the samples are kept in the JSON): a single run of
this 2-vCPU VM moves by tens of percent within minutes, so the sides take turns
round by round (`lockstep`) and the drift falls on all of them alike. The
largest size runs once per side, one side after the other (its attachments stay
up between its phases, and 500 of one side must not slow the other's). Prints
the ratios and writes bench/results/engine.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import PYTHON, REFERENCE, ROOT, write_results  # noqa: E402


def network_conf(name: str, bridge: str, subnet: str, data_dir: str | None = None, masq: bool = False) -> dict:
    ipam: dict = {"type": "host-local", "ranges": [[{"subnet": subnet}]]}
    if data_dir:
        ipam["dataDir"] = data_dir
    return {"cniVersion": "1.0.0", "name": name,
            "plugins": [{"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": masq, "ipam": ipam}]}


def write_specs(directory: Path, n: int, prefix: str, bridge: str, subnet: str, masq: bool = False) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bench.conflist").write_text(json.dumps(network_conf("bench", bridge, subnet, masq=masq)))
    lines = [f'[[attachment]]\nid = "c{i}"\nnetwork = "bench"\nnetns = "{prefix}{i}"\n' for i in range(n)]
    (directory / "attachments.toml").write_text("\n".join(lines))


SETTLE_S = 3.0  # the kernel's namespace cleanup after a teardown of hundreds (see kernel_floors, settled)
ROUNDS = 5  # converge / no-op / teardown cycles of each size but the largest; medians are reported


def cycles(res: dict, label: str, n: int, rounds: int,
           phases: list[tuple[str, str, Callable[[], float]]], turns: bool = True) -> Iterator[None]:
    """Run `phases` (key, what to print, a timed run returning seconds) `rounds` times over and keep,
    per phase, res[f"{key}_{n}"] = the median and res["samples"][...] = every round. With `turns`,
    yields after each round, so that `lockstep` runs the other sides' rounds in between."""
    samples: dict[str, list[float]] = {}
    for _ in range(rounds):
        for key, what, run in phases:
            secs = run()
            samples.setdefault(f"{key}_{n}", []).append(secs)
            print(f"  {label}: {what} {n}: {secs:.2f}s", flush=True)
        if turns:
            yield
    for key, values in samples.items():
        res[key] = statistics.median(values)
        res.setdefault("samples", {})[key] = [round(x, 3) for x in values]


def lockstep(*sides: Generator[None, None, dict]) -> list[dict]:
    """Advance each side one step (a round) in turn until all are done; their results, in order.

    Round by round, ours, ours driving the reference binaries and the reference take turns: this
    VM's speed drifts by tens of percent within minutes, and interleaving lays that drift on all
    three alike instead of on whichever side ran last."""
    results: list[dict] = [{} for _ in sides]
    live = list(enumerate(sides))
    while live:
        for entry in list(live):
            index, side = entry
            try:
                next(side)
            except StopIteration as done:
                results[index] = done.value
                live.remove(entry)
    return results


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def settled(fn) -> tuple[float, object]:
    """`timed(fn)` once the kernel has had SETTLE_S to finish tearing down the namespaces the
    previous phase deleted: that background work belongs to the phase that left it (the
    reference's teardown returns before it is done), not to the converge that happens to follow."""
    time.sleep(SETTLE_S)
    return timed(fn)


def engine_side(work: Path, sizes: list[int], big: int, exec_mode: bool = False,
                masq_size: int = 0) -> Generator[None, None, dict]:
    """The engine's phases, a round per step (see `lockstep`); returns the timings."""
    from reconciler.engine.apply import Engine
    from reconciler.kernel import namespaces

    tag = uuid.uuid4().hex[:4]
    label = "engine+reference" if exec_mode else "engine"
    prefix, specs, state = f"rcn-be{tag}-", work / f"e-specs-{tag}", work / f"e-state-{tag}"
    res: dict = {}

    def engine() -> Engine:
        return Engine(specs, state, cni_path=str(REFERENCE), exec_mode=exec_mode, show_progress=False)

    def converge(n: int, masq: bool = False) -> float:
        if masq:  # the same with ipMasq: every ADD and DEL also writes the host's firewall
            write_specs(specs, n, prefix, f"rcnbq{tag}", "10.243.0.0/16" if exec_mode else "10.244.0.0/16", masq=True)
        else:
            write_specs(specs, n, prefix, f"rcnbe{tag}", "10.242.0.0/16" if exec_mode else "10.240.0.0/16")
        secs, report = settled(engine().apply)
        if report.failed:  # counted, not fatal: a loaded host can fail an attachment now and then
            key = f"masq_converge_{n}" if masq else f"converge_{n}"
            res.setdefault("failed", {})[key] = [f"{o.key}: {o.error}" for o in report.failed][:5]
            print(f"  {label}: {len(report.failed)} failed: {report.failed[0].error}", flush=True)
            engine().apply()  # converge the rest before measuring what follows
        return secs

    def teardown() -> float:
        (specs / "attachments.toml").write_text("")
        secs, report = timed(engine().apply)
        if report.failed:
            res.setdefault("failed", {})["teardown"] = [f"{o.key}: {o.error}" for o in report.failed][:5]
        return secs

    if masq_size:
        key = f"masq_converge_{masq_size}"
        res[key] = converge(masq_size, masq=True)
        print(f"  {label}: converge {masq_size} with ipMasq: {res[key]:.2f}s", flush=True)
        res[f"masq_teardown_{masq_size}"] = teardown()
        print(f"  {label}: teardown {masq_size} with ipMasq: {res[f'masq_teardown_{masq_size}']:.2f}s", flush=True)
        yield

    def noop() -> float:
        secs, report = timed(engine().apply)
        assert not report.outcomes, "the no-op pass did something"
        return secs

    for n in sizes:
        phases = [("converge", "converge", lambda n=n: converge(n)), ("noop", "no-op pass over", noop)]
        yield from cycles(res, label, n, ROUNDS if n != big else 1,
                          phases + ([("teardown", "teardown", teardown)] if n != big else []), turns=n != big)
    victim = f"{prefix}{big // 2}"
    def global_addrs() -> list[str]:
        return [a for a in namespaces.snapshot(f"/run/netns/{victim}")["eth0"].addresses if not a.startswith("fe80")]

    before = global_addrs()
    subprocess.run(["ip", "-n", victim, "link", "del", "eth0"], check=True)
    res[f"repair_one_of_{big}"], report = timed(engine().apply)
    assert [o.action for o in report.outcomes] == ["repair"], report.outcomes
    assert global_addrs() == before, (global_addrs(), before)
    print(f"  {label}: repair one of {big}: {res[f'repair_one_of_{big}']:.2f}s", flush=True)
    res[f"teardown_{big}"] = teardown()
    print(f"  {label}: teardown {big}: {res[f'teardown_{big}']:.2f}s", flush=True)
    return res


def reference_side(work: Path, sizes: list[int], big: int, masq_size: int = 0) -> Generator[None, None, dict]:
    """The reference's phases, a round per step (see `lockstep`); returns the timings."""
    from reconciler.cni.chain import Runner, RuntimeConf
    from reconciler.cni.conf import conflist_from_bytes
    from reconciler.errors import CNIError
    from reconciler.kernel import namespaces

    tag = uuid.uuid4().hex[:4]
    prefix, cache_dir = f"rcn-br{tag}-", str(work / "r-state")
    conf = network_conf("bench", f"rcnbr{tag}", "10.241.0.0/16", str(work / "r-state" / "networks"))
    netlist = conflist_from_bytes(json.dumps(conf).encode())
    runner = Runner(str(REFERENCE), cache_dir, exec_mode=True)
    rt = [RuntimeConf(f"c{i}", f"/run/netns/{prefix}{i}", "eth0") for i in range(max(sizes + [big]))]
    res: dict = {}

    def converge(n: int, conf: Any = netlist) -> None:
        for i in range(n):
            namespaces.create(f"{prefix}{i}")
            runner.add(conf, rt[i])

    def teardown(n: int, conf: Any = netlist) -> None:
        for i in range(n):
            runner.delete(conf, rt[i])
            namespaces.delete(f"{prefix}{i}")

    def check_all(n: int) -> list[int]:
        bad = []
        for i in range(n):
            try:
                runner.check(netlist, rt[i])
            except CNIError:
                bad.append(i)
        return bad

    if masq_size:
        masq_conf = network_conf("benchmasq", f"rcnbm{tag}", "10.245.0.0/16", str(work / "r-state" / "networks"),
                                 masq=True)
        masq_list = conflist_from_bytes(json.dumps(masq_conf).encode())
        res[f"masq_converge_{masq_size}"], _ = settled(lambda: converge(masq_size, masq_list))
        print(f"  reference: converge {masq_size} with ipMasq: {res[f'masq_converge_{masq_size}']:.2f}s", flush=True)
        res[f"masq_teardown_{masq_size}"], _ = timed(lambda: teardown(masq_size, masq_list))
        print(f"  reference: teardown {masq_size} with ipMasq: {res[f'masq_teardown_{masq_size}']:.2f}s", flush=True)
        yield
    def check_all_timed(n: int) -> float:
        secs, bad = timed(lambda: check_all(n))
        assert bad == [], bad
        return secs

    for n in sizes:
        phases = [("converge", "converge", lambda n=n: settled(lambda: converge(n))[0]),
                  ("noop", "CHECK all", lambda n=n: check_all_timed(n))]
        teardown_phase = [("teardown", "teardown", lambda n=n: timed(lambda: teardown(n))[0])]
        yield from cycles(res, "reference", n, ROUNDS if n != big else 1,
                          phases + (teardown_phase if n != big else []), turns=n != big)
    victim = big // 2
    subprocess.run(["ip", "-n", f"{prefix}{victim}", "link", "del", "eth0"], check=True)

    def repair() -> None:
        for i in check_all(big):
            runner.delete(netlist, rt[i])
            runner.add(netlist, rt[i])

    res[f"repair_one_of_{big}"], _ = timed(repair)
    print(f"  reference: repair one of {big}: {res[f'repair_one_of_{big}']:.2f}s", flush=True)
    res[f"teardown_{big}"], _ = timed(lambda: teardown(big))
    print(f"  reference: teardown {big}: {res[f'teardown_{big}']:.2f}s", flush=True)
    return res


def kernel_floors(sizes: list[int]) -> dict[str, Any]:
    """bench.floors.kernel_converge for each size, with the engine's process count (best of two up to 100).

    Namespaces are torn down asynchronously by the kernel: each measurement starts after a pause so that
    the cleanup of the previous one is not billed to it, nor this one's to what follows."""
    from bench.floors import kernel_converge
    from reconciler.engine.workers import default_count

    workers = default_count()
    out: dict[str, Any] = {"workers": workers}
    for n in sizes:
        runs = []
        for _ in range(2 if n <= 100 else 1):
            time.sleep(SETTLE_S)
            runs.append(kernel_converge(n, workers, uuid.uuid4().hex[:4]))
        out[f"kernel_converge_{n}"] = min(runs)
        print(f"  kernel floor: converge {n}: {out[f'kernel_converge_{n}']:.2f}s", flush=True)
    return out


def inner(args: argparse.Namespace) -> int:
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    big = max(sizes)
    work = Path(tempfile.mkdtemp(prefix="rcn-engine-bench-"))
    try:
        print("kernel floor (bench.floors.kernel_converge), measured first, on a quiet kernel:", flush=True)
        floor = kernel_floors(sizes)
        time.sleep(SETTLE_S)
        print(f"sizes {sizes}, round by round: engine (our plugins in-process, verify after every ADD); "
              "engine+reference (the engine driving the reference plugins exec'd, to separate engine overhead "
              "from plugin cost); reference (Go plugins exec'd through the chain runner, one attachment at a "
              "time):", flush=True)
        ours, ours_ref, ref = lockstep(engine_side(work, sizes, big, masq_size=args.masq),
                                       engine_side(work, sizes, big, exec_mode=True, masq_size=args.masq),
                                       reference_side(work, sizes, big, masq_size=args.masq))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for name in os.listdir("/run/netns"):
            if name.startswith(("rcn-be", "rcn-br", "rcn-fl")) and name[6:10].isalnum():
                subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    def timed_keys(side: dict) -> list[str]:
        return [k for k, v in side.items() if isinstance(v, float)]

    ratios = {k: round(ours[k] / ref[k], 2) for k in timed_keys(ours) if k in ref and ref[k] > 0}
    ratios_ref = {k: round(ours_ref[k] / ref[k], 2) for k in timed_keys(ours_ref) if k in ref and ref[k] > 0}
    print(f"\n{'scenario':<20}{'engine s':>10}{'eng+ref s':>11}{'reference s':>13}{'ratio':>8}{'ratio eng+ref':>15}")
    for key in timed_keys(ours):
        if key in ref:
            print(f"{key:<20}{ours[key]:>10.2f}{ours_ref.get(key, 0):>11.2f}{ref[key]:>13.2f}"
                  f"{ratios[key]:>8.2f}{ratios_ref.get(key, 0):>15.2f}")
    print("ratio = engine / reference (below 1: the engine is faster); eng+ref = the engine driving the same "
          "reference binaries")
    for n in sizes:
        key, secs = f"converge_{n}", floor[f"kernel_converge_{n}"]
        if key in ours and key in ref:
            print(f"kernel floor, converge {n} ({floor['workers']} processes, bare kernel objects): {secs:.2f} s "
                  f"= reference / {ref[key] / secs:.1f}; the engine is the floor + {ours[key] - secs:.2f} s")
    growth = {}
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        for scenario in ("converge", "noop"):
            a, b = ours.get(f"{scenario}_{lo}"), ours.get(f"{scenario}_{hi}")
            if a and b:
                growth[f"{scenario}_{hi}/{scenario}_{lo}"] = round(b / a, 2)
        print(f"engine growth {lo} -> {hi} attachments (linear = {hi / lo:.1f}): " +
              ", ".join(f"{k} {v}" for k, v in growth.items()))
    path = write_results("engine", {"sizes": sizes, "engine_s": ours, "engine_reference_plugins_s": ours_ref,
                                    "reference_s": ref, "floor_s": floor, "ratio": ratios, "engine_growth": growth, "ratio_engine_reference_plugins": ratios_ref,
                                    "notes": "engine pass = recover + observe + plan + apply + verify (CHECK) "
                                             "+ status; reference = runner in exec mode, no verification; "
                                             "floor = bench.floors.kernel_converge"})
    print(f"wrote {path}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,500", help="attachment counts to converge (the largest is reused)")
    parser.add_argument("--masq", type=int, default=100,
                        help="also converge and tear down this many attachments with ipMasq (0: skip)")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("engine_bench: needs root", file=sys.stderr)
        return 1
    if not (REFERENCE / "bridge").exists():
        print("engine_bench: reference plugins not installed; skipping", file=sys.stderr)
        return 0
    if args.inner:
        return inner(args)
    host = f"rcn-bh{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", host], check=True)
    try:
        subprocess.run(["ip", "-n", host, "link", "set", "lo", "up"], check=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT), CNI_PATH=str(REFERENCE))
        cmd = ["nsenter", f"--net=/run/netns/{host}", PYTHON, __file__, "--inner", "--sizes", args.sizes,
               "--masq", str(args.masq)]
        return subprocess.run(cmd, env=env, cwd=ROOT).returncode
    finally:
        subprocess.run(["ip", "netns", "delete", host], check=False)


if __name__ == "__main__":
    sys.exit(main())
