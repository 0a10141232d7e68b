"""`make bench`: run every benchmark (ours and the reference, side by side, in private namespaces).

Each script prints its own table and writes bench/results/<name>.json; this
runner collects them into bench/results/summary.json and prints the targets
of the speed issue with the measured ratios.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import PYTHON, RESULTS, ROOT, machine  # noqa: E402

SCRIPTS = [
    ("plugin_latency", ["bench/plugin_latency.py", "-n", "50"]),
    ("ipam", ["bench/ipam_bench.py"]),
    ("portmap", ["bench/portmap_bench.py"]),
    ("engine", ["bench/engine_bench.py"]),
]


def _get(data: dict, *path: str) -> float | None:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data if isinstance(data, int | float) else None


def _row(target: str, measured: float | None, goal: float, unit: str, floor: float | None = None,
         higher_is_better: bool = True) -> dict:
    met = None if measured is None else (measured >= goal if higher_is_better else measured <= goal)
    return {"target": target, "measured": None if measured is None else round(measured, 2), "goal": goal,
            "unit": unit, "floor": None if floor is None else round(floor, 2), "met": met}


def targets(results: dict) -> list[dict]:
    """Issue 8's targets against this run's figures, with the machine's floor where one is measured
    (bench/floors.py): the best any implementation doing the same work could show here."""
    lat, eng, ipam = results.get("plugin_latency", {}), results.get("engine", {}), results.get("ipam", {})
    ref_add = _get(lat, "results", "reference", "add", "p50_ms")

    def add_ratio(impl: str) -> float | None:
        ours = _get(lat, "results", impl, "add", "p50_ms")
        return ours / ref_add if ours and ref_add else None

    pydantic_floor = _get(lat, "floor_s", "interpreter_pydantic_s")
    rows = [
        _row("exec'd ADD with the daemon, x reference", add_ratio("ours-warm"), 0.8, "x", higher_is_better=False),
        _row("exec'd ADD without a daemon, x reference", add_ratio("ours-cold"), 6.0, "x",
             pydantic_floor * 1000 / ref_add if pydantic_floor and ref_add else None, higher_is_better=False),
    ]
    for scenario, label in (("converge_100", "reconciler up 100"), ("teardown_100", "reconciler down 100")):
        ours, ref = _get(eng, "engine_s", scenario), _get(eng, "reference_s", scenario)
        floor = _get(eng, "floor_s", f"kernel_{scenario}") if scenario.startswith("converge") else None
        rows.append(_row(f"{label}, times faster than the reference", ref / ours if ours and ref else None, 5.0,
                         "x", ref / floor if floor and ref else None))
    rows.append(_row("no-op pass over 500, seconds", _get(eng, "engine_s", "noop_500"), 1.0, "s",
                     higher_is_better=False))
    for store in ("disk", "tmpfs"):
        ref_rates = _get(ipam, "stores", store, "allocations_per_second", "reference exec'd", "4w")
        for impl, goal in (("ours in-process", 10.0), ("ours exec'd warm", 1.0)):
            ours = _get(ipam, "stores", store, "allocations_per_second", impl, "4w")
            floor = _get(ipam, "stores", store, "floor_allocations_per_second", "4w")
            rows.append(_row(f"host-local {impl}, 4 writers, {store}, x reference",
                             ours / ref_rates if ours and ref_rates else None, goal, "x",
                             floor / ref_rates if floor and ref_rates and impl == "ours in-process" else None))
    return rows


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_targets(rows: list[dict]) -> None:
    print(f"\n{'target (issue 8)':<62}{'measured':>10}{'goal':>8}{'floor':>8}  met")
    for row in rows:
        met = {True: "yes", False: "no", None: "?"}[row["met"]]
        print(f"{row['target']:<62}{_fmt(row['measured']):>10}{row['goal']:>8}{_fmt(row['floor']):>8}  {met}")
    print("floor: what the machine allows for the same work (bench/floors.py); a goal beyond it cannot be met here")


def main() -> int:
    failures = []
    ran = {}
    for name, argv in SCRIPTS:
        if not (ROOT / argv[0]).exists():
            continue
        print(f"\n=== {name}: {' '.join(argv)}", flush=True)
        start = time.monotonic()
        proc = subprocess.run([PYTHON, *argv], cwd=ROOT)
        ran[name] = {"seconds": round(time.monotonic() - start, 1), "exit": proc.returncode}
        if proc.returncode != 0:
            failures.append(name)
    collected = {}
    for path in sorted(RESULTS.glob("*.json")):
        if path.name != "summary.json":
            collected[path.stem] = json.loads(path.read_text())
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = targets(collected)
    print_targets(rows)
    (RESULTS / "summary.json").write_text(json.dumps({"machine": machine(), "runs": ran, "targets": rows,
                                                     "results": collected}, indent=1))
    print(f"\nwrote {RESULTS / 'summary.json'}; failed: {failures or 'none'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
