"""Reused libnftables contexts still see every change made by anyone between two transactions.

The reconciler and the daemon's workers keep idle contexts of their own namespace (freeing one
costs O(ruleset)). The process under test runs entirely inside the test's namespace, so that
namespace is its own and its contexts are kept.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.firewall.conftest import sh

SCRIPT = r"""
import json, subprocess
from reconciler.kernel.firewall import nftables as N

def tables(nft):
    return sorted(t["table"]["name"] for t in nft.run([{"list": {"tables": {}}}]) if "table" in t)

out = {}
N.transact(None, lambda nft: nft.run([{"add": {"table": {"family": "inet", "name": "rcnctx_a"}}}]))
out["idle_after_first"] = sum(len(v) for v in N._IDLE.values())
subprocess.run(["nft", "add", "table", "inet", "rcnctx_b"], check=True)      # someone else adds one
out["seen_after_external_add"] = N.transact(None, tables)
subprocess.run(["nft", "delete", "table", "inet", "rcnctx_a"], check=True)   # ... and deletes ours
out["seen_after_external_delete"] = N.transact(None, tables)
out["table_view_of_deleted"] = N.transact(None, lambda nft: nft.table("inet", "rcnctx_a") is None)
out["idle_at_end"] = sum(len(v) for v in N._IDLE.values())
print(json.dumps(out))
"""


def test_reused_context_sees_changes_made_in_between(hostns: str) -> None:
    proc = subprocess.run(["ip", "netns", "exec", hostns, sys.executable, "-c", SCRIPT],
                          capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["idle_after_first"] == 1  # kept, not freed
    assert got["seen_after_external_add"] == ["rcnctx_a", "rcnctx_b"]
    assert got["seen_after_external_delete"] == ["rcnctx_b"]
    assert got["table_view_of_deleted"] is True
    assert got["idle_at_end"] == 1  # one context served every transaction
    assert "rcnctx_a" not in sh(hostns, "nft", "list", "tables")


def test_contexts_of_other_namespaces_are_not_kept(hostns: str) -> None:
    from reconciler.kernel.firewall import nftables

    before = sum(len(v) for v in nftables._IDLE.values())
    names = nftables.transact(hostns, lambda nft: [t["table"]["name"] for t in
                                                   nft.run([{"list": {"tables": {}}}]) if "table" in t])
    assert names == []  # the test's namespace starts empty
    assert sum(len(v) for v in nftables._IDLE.values()) == before
