"""desired x recorded x live -> Plan. Pure: no I/O, so it can be tested and replayed offline."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from reconciler.engine.inventory import Record
from reconciler.engine.specs import Specs, network_hash

ORDER = {"delete": 0, "replace": 1, "repair": 2, "add": 3}


@dataclass
class Step:
    """One attachment's decision, with the reason and where it came from."""

    kind: str  # add | replace | repair | delete | noop | kept | backoff
    key: str
    network: str
    id: str
    ifname: str
    netns: str
    why: str
    file: str = ""
    line: int | None = None
    drift: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return self.kind in ("add", "replace", "repair", "delete", "backoff")


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    create_namespaces: list[str] = field(default_factory=list)
    delete_namespaces: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)  # journal entries the next apply undoes first

    @property
    def actions(self) -> list[Step]:
        """Steps that change something, in apply order: deletions, replacements, repairs, additions."""
        todo = [s for s in self.steps if s.kind in ORDER]
        return sorted(todo, key=lambda s: (ORDER[s.kind], s.key))

    @property
    def has_changes(self) -> bool:
        return any(s.changes for s in self.steps) or bool(
            self.create_namespaces or self.delete_namespaces or self.interrupted
        )

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for step in self.steps:
            out[step.kind] = out.get(step.kind, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "changes": self.has_changes,
            "counts": self.counts(),
            "steps": [asdict(s) for s in sorted(self.steps, key=lambda s: (ORDER.get(s.kind, 9), s.key))],
            "create_namespaces": self.create_namespaces,
            "delete_namespaces": self.delete_namespaces,
            "errors": self.errors,
            "interrupted": self.interrupted,
        }


def make_plan(
    specs: Specs,
    records: dict[str, Record],
    drift: dict[str, list[str]],
    owned_namespaces: set[str],
    live_namespaces: set[str],
    backoff_until: dict[str, float] | None = None,
    now: float = 0.0,
) -> Plan:
    """Decide every attachment's step. `drift` holds what observe found wrong with each recorded one."""
    backoff_until = backoff_until or {}
    plan = Plan(errors=[str(e) for e in specs.errors])
    for key in sorted(set(specs.attachments) | set(records)):
        att = specs.attachments.get(key)
        rec = records.get(key)
        if att is None and rec is not None:
            why = specs.protected_because(key, rec.network, rec.file, rec.network_file)
            if why:
                plan.steps.append(Step("kept", key, rec.network, rec.id, rec.ifname, rec.netns, why, rec.file))
            else:
                why = f"no longer in the specs (was in {rec.file})"
                plan.steps.append(Step("delete", key, rec.network, rec.id, rec.ifname, rec.netns, why, rec.file))
            continue
        assert att is not None
        step = Step("noop", key, att.network, att.id, att.ifname, att.netns, "in sync", att.file, att.line)
        if rec is None:
            step.kind, step.why = "add", "missing"
        elif rec.fingerprint != att.fingerprint(specs.networks[att.network]):
            network = specs.networks[att.network]
            if rec.netns != att.netns:
                changed = f"its netns changed ({rec.netns} -> {att.netns})"
            elif rec.network_hash and rec.network_hash != network_hash(network):
                changed = f"network {att.network} changed ({network.source})"
            else:
                changed = "its attachment spec changed (args, capabilities)"
            step.kind, step.why = "replace", changed
        elif drift.get(key):
            step.drift = list(drift[key])
            if backoff_until.get(key, 0.0) > now:
                step.kind, step.why = "backoff", "drifted again; repair backing off"
            else:
                step.kind, step.why = "repair", "drifted: " + "; ".join(drift[key])
        plan.steps.append(step)
    needed = {a.netns for a in specs.attachments.values() if a.owns_netns}
    kept = {s.netns for s in plan.steps if s.kind != "delete"}
    plan.create_namespaces = sorted(n for n in needed if n not in live_namespaces)
    plan.delete_namespaces = sorted(
        n for n in owned_namespaces if n not in needed and n not in kept and n in live_namespaces
    )
    return plan
