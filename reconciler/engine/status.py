"""Human and JSON renderings: the plan as a diff, check's drift list, the status table."""

from __future__ import annotations

import time
from typing import Any

from reconciler.engine.inventory import Inventory
from reconciler.engine.planner import Plan

SIGNS = {"add": "+", "delete": "-", "replace": "~", "repair": "!", "backoff": "!", "kept": "=", "noop": " "}


def render_plan(plan: Plan, verbose: bool = False) -> str:
    lines: list[str] = []
    for err in plan.errors:
        lines.append(f"error: {err}")
    for item in plan.interrupted:
        lines.append(f"! interrupted {item}: undone first, then planned again")
    for ns in plan.create_namespaces:
        lines.append(f"+ netns {ns} (create)")
    for step in sorted(plan.steps, key=lambda s: s.key):
        if step.kind == "noop" and not verbose:
            continue
        where = f" [{step.file}{':' + str(step.line) if step.line else ''}]" if step.file else ""
        lines.append(f"{SIGNS.get(step.kind, '?')} {step.kind:<8} {step.key} (netns {step.netns}): {step.why}{where}")
    for ns in plan.delete_namespaces:
        lines.append(f"- netns {ns} (delete: no spec names it)")
    counts = plan.counts()
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing"
    lines.append(f"Plan: {summary}." + ("" if plan.has_changes else " No changes: the host matches the specs."))
    return "\n".join(lines)


def _age(ts: float | None) -> str:
    if not ts:
        return "-"
    secs = int(time.time() - ts)
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    return f"{secs // 3600}h"


def status_data(inventory: Inventory) -> dict[str, Any]:
    status = inventory.status()
    records = inventory.records()
    rows = []
    for key in sorted(set(records) | set(status["attachments"])):
        rec = records.get(key)
        st = status["attachments"].get(key, {})
        network, cid, ifname = key.split("/", 2)
        rows.append(
            {
                "key": key,
                "network": network,
                "id": cid,
                "ifname": ifname,
                "netns": rec.netns if rec else "",
                "ips": (rec.ips if rec else st.get("ips")) or [],
                "applied": rec is not None,
                "last_action": st.get("action", ""),
                "last_result": st.get("result", ""),
                "error": st.get("error", ""),
                "time": st.get("time") or (rec.applied_at if rec else None),
            }
        )
    return {
        "attachments": rows,
        "namespaces": sorted(inventory.namespaces()),
        "last_pass": status.get("last_pass"),
    }


def render_status(data: dict[str, Any]) -> str:
    header = ("NETWORK", "ID", "NETNS", "IFNAME", "IPS", "ACTION", "RESULT", "AGE")
    rows = [header]
    for row in data["attachments"]:
        rows.append(
            (
                row["network"], row["id"], row["netns"] or "-", row["ifname"],
                ",".join(row["ips"]) or "-", row["last_action"] or "-", row["last_result"] or "-", _age(row["time"]),
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    for row in data["attachments"]:
        if row["last_result"] in ("failed", "failing", "kept") and row["error"]:
            lines.append(f"  {row['key']}: {row['last_result']}: {row['error']}")
    last = data.get("last_pass")
    if last:
        outcome = ", ".join(f"{n} {k}" for k, n in sorted((last.get("outcomes") or {}).items())) or "no changes"
        state = "converged" if last.get("converged") else "NOT converged"
        lines.append(
            f"Last pass: {_age(last.get('finished'))} ago, {last.get('duration')}s, {state}: {outcome}"
            + (f"; {len(last.get('spec_errors') or [])} spec error(s)" if last.get("spec_errors") else "")
        )
    else:
        lines.append("No pass has run yet.")
    return "\n".join(lines)
