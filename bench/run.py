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
    (RESULTS / "summary.json").write_text(json.dumps({"machine": machine(), "runs": ran, "results": collected},
                                                     indent=1))
    print(f"\nwrote {RESULTS / 'summary.json'}; failed: {failures or 'none'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
