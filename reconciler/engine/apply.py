"""One reconcile pass: lock, recover the journal, observe, plan, execute with undo, record status."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from reconciler.cni import cache, registry
from reconciler.cni.cache import CacheEntry
from reconciler.cni.chain import Runner, RuntimeConf
from reconciler.cni.conf import NetworkConfigList, conflist_from_bytes
from reconciler.engine.adopt import from_cache, new_record
from reconciler.engine.inventory import Inventory, Record
from reconciler.engine.journal import Intent, Journal
from reconciler.engine.netconf import with_data_dir, with_requested_ips
from reconciler.engine.observe import Fresh, Observation, judge, observe
from reconciler.engine.planner import Plan, Step, make_plan
from reconciler.engine.progress import Progress
from reconciler.engine.specs import Attachment, Specs, load_specs
from reconciler.engine.workers import WorkerFailed, default_count, fork_map, fork_queue
from reconciler.errors import CNIError, SpecError
from reconciler.kernel import durable, namespaces
from reconciler.kernel.firewall.batch import batched_writes

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_CNI_PATH = "/opt/cni/bin:/usr/lib/cni"
# Our plugin types whose DEL undoes everything outside the container's namespace from the cached
# result alone, and whose in-namespace state the kernel removes with the namespace (veth pairs,
# routes over them, sysctls): for these the engine may delete an emptied namespace before the DELs.
DEL_WITHOUT_NETNS = frozenset({"bridge", "ptp", "loopback", "host-local", "static", "portmap", "firewall",
                               "bandwidth", "tuning"})
BACKOFF_AFTER = 3  # consecutive repairs without an in-sync pass before backing off
PARALLEL_MIN = 4  # fewer parallel-eligible ADDs than this run in this process
OBSERVE_PER_WORKER = 32  # attachments per judging worker below which forking does not pay


@dataclass
class Outcome:
    key: str
    action: str
    result: str  # ok | failed | failing | skipped
    error: str = ""
    ips: list[str] = field(default_factory=list)
    time: float = field(default_factory=time.time)


@dataclass
class Pending:
    """An ADD done in this pass and not yet verified."""

    att: Attachment
    netlist: NetworkConfigList
    rt: RuntimeConf
    created_netns: bool = False
    record: Record | None = None
    outcome: Outcome | None = None
    entry: CacheEntry | None = None  # the result cache entry its ADD wrote (None: ADDed in another process)


def _fresh(pendings: Iterable[Pending]) -> dict[str, Fresh]:
    """What the ADDs of `pendings` done in this process wrote, by attachment key."""
    return {p.att.key: (p.entry, p.netlist) for p in pendings if p.entry is not None}


# what a worker returns per ADD: outcome, record, whether it created the namespace, verdict (None: not judged)
SliceResult = tuple[Outcome, Record | None, bool, list[str] | None]


@dataclass
class PassReport:
    plan: Plan
    outcomes: list[Outcome] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    finished: float = 0.0

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result in ("failed", "failing")]

    @property
    def exit_code(self) -> int:
        return 3 if self.failed or self.plan.errors else 0

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[f"{o.action}:{o.result}"] = counts.get(f"{o.action}:{o.result}", 0) + 1
        return {
            "started": self.started,
            "finished": self.finished,
            "duration": round(self.finished - self.started, 3),
            "outcomes": counts,
            "failed": len(self.failed),
            "spec_errors": self.plan.errors,
            "recovered": self.recovered,
            "converged": self.exit_code == 0,
        }


class Engine:
    """The reconciler over one specs directory and one state directory."""

    def __init__(
        self,
        specs_dir: str | Path,
        state_dir: str | Path,
        cni_path: str | None = None,
        exec_mode: bool | None = None,
        verify_retries: int = 5,
        verify_delay: float = 0.2,
        show_progress: bool | None = None,
    ) -> None:
        self.specs_dir = str(specs_dir)
        self.state_dir = str(Path(state_dir).absolute())
        self.inventory = Inventory(self.state_dir)
        self.journal = Journal(self.state_dir)
        path = cni_path or os.environ.get("CNI_PATH") or DEFAULT_CNI_PATH
        if exec_mode is None:
            exec_mode = os.environ.get("RECONCILER_EXEC_MODE") == "1"
        self.runner = Runner(path, self.state_dir, exec_mode=exec_mode, ignore_unknown_args=True)  # a runtime
        self.data_dir = str(Path(self.state_dir) / "networks")
        os.environ.setdefault("RECONCILER_IPAM_DATADIR", self.data_dir)
        self.verify_retries = verify_retries
        self.verify_delay = verify_delay
        self.show_progress = show_progress
        self.backoff_base = float(os.environ.get("RECONCILER_REPAIR_BACKOFF", "10"))
        self.batch: list[Pending] = []
        self._netlists: dict[str, NetworkConfigList] = {}  # per network, for the current pass
        self.journaled: set[str] = set()  # keys whose steps this pass journaled in one batch entry
        self.vanishing: set[str] = set()  # host veths the kernel removes with namespaces deleted this pass
        self.claimed: set[str] = set()  # namespaces this pass claimed before creating them
        self.keep_journal = False  # a worker died: leave the pass's journal batch for the next recovery
        self.workers = default_count()
        self.observe_per_worker = max(1, int(os.environ.get("RECONCILER_OBSERVE_PER_WORKER") or OBSERVE_PER_WORKER))

    # ---- reading
    def load(self) -> Specs:
        """Load the specs; a missing directory is an error (it must never read as "nothing desired")."""
        specs = load_specs(self.specs_dir)
        if specs.unreadable:
            raise SpecError(self.specs_dir, "", "specs directory does not exist (nothing was changed)")
        return specs

    def observe(self, records: dict[str, Record], keys: set[str] | None = None, deep: bool = True) -> Observation:
        """Read every namespace once here, then judge the attachments, split over worker processes when many.

        The workers inherit the reads (the shared snapshot cache) and only run the judging and the
        plugins' CHECKs, which read from it: CPU-bound work that a second CPU halves. A worker that
        fails has its slice judged here instead.
        """
        chosen = [r for k, r in records.items() if keys is None or k in keys]
        bar = Progress(len(chosen), "observe", enabled=self.show_progress)
        try:
            paths = [None, *(r.netns_path for r in chosen)]
            with namespaces.session(), namespaces.shared(paths):
                if not deep or self._judging_workers(len(chosen)) < 2:
                    return observe(chosen, self.runner, deep, progress=bar.step)
                obs = observe([], self.runner, deep)  # the host and the list of namespaces, read once
                obs.drift.update(self._judge_all(chosen, obs))
                for rec in chosen:
                    bar.step(rec.key)
                return obs
        finally:
            bar.close()

    def plan(self, specs: Specs | None = None, records: dict[str, Record] | None = None) -> tuple[Plan, Observation]:
        """The plan against the live state (`records`: the inventory, if the caller has just read it)."""
        specs = specs or self.load()
        if records is None:  # a plan on its own: shows what a pass would do with the records it would rebuild
            records = self.inventory.records()
            records = {**records, **self._records_from_cache(specs, records)}
        # only attachments that stay as they are need a live verdict
        keep = {
            k
            for k, rec in records.items()
            if k in specs.attachments
            and rec.fingerprint == specs.attachments[k].fingerprint(specs.networks[rec.network])
        }
        obs = self.observe(records, keep)
        status = self.inventory.status()["attachments"]
        backoff = {k: float(v.get("backoff_until") or 0) for k, v in status.items()}
        plan = make_plan(
            specs, records, obs.drift, self.inventory.namespaces(), obs.live_namespaces, backoff, time.time()
        )
        plan.interrupted = [f"{i.key}: {i.action} ({i.phase}) by pid {i.pid}" for i in self.journal.pending()]
        return plan, obs

    # ---- recovery
    def recover(self) -> list[str]:
        """Finish or undo whatever a killed process left half-done (before planning anything).

        The records of the intents undone are dropped in one save, before the intents are
        forgotten in one pass over the journal: a kill in between leaves intents whose DEL is
        done again (DEL is idempotent)."""
        done: list[str] = []
        pending = self.journal.pending()
        if not pending:
            return done
        records = self.inventory.records()
        undone: list[str] = []
        for intent in pending:
            rt = RuntimeConf(
                intent.container_id, intent.netns, intent.ifname,
                tuple((k, v) for k, v in intent.cni_args), intent.capability_args,
            )
            entry = cache.read(self.state_dir, intent.network, intent.container_id, intent.ifname)
            try:
                if entry is not None and entry.config:
                    self.runner.delete_cached(entry)
                elif intent.config:
                    self.runner.delete(conflist_from_bytes(intent.config, "journal"), rt)
            except CNIError as err:
                log.warning("recovery of %s: DEL failed: %s", intent.key, err)
                continue
            self.inventory.drop(intent.key)
            records.pop(intent.key, None)
            if intent.netns_name and not any(r.netns == intent.netns_name for r in records.values()):
                self.drop_namespace(intent.netns_name)
            undone.append(intent.key)
            done.append(f"{intent.key}: undid interrupted {intent.action} ({intent.phase})")
            log.info("recovered %s: undid interrupted %s", intent.key, intent.action)
        self.inventory.save()  # the records go before their intents
        self.journal.forget(undone)
        return done

    # ---- steps
    def drop_namespace(self, name: str) -> None:
        if name in self.inventory.namespaces():
            namespaces.delete(name)
            self.inventory.release_namespace(name)

    def _ensure_namespace(self, att: Attachment, intent: Intent | None) -> bool:
        """Create the attachment's named netns if missing; True when this call created it. `intent`:
        the ADD's own journal entry (None when the pass's batch holds it)."""
        if not att.owns_netns or namespaces.exists(att.netns):
            return False
        if intent is not None:
            intent.netns_name = att.netns
            self.journal.begin(intent)
        if att.netns not in self.claimed:  # the pass claims those it knows of up front, in one write
            self.inventory.claim_namespace(att.netns)  # claim first: a crash leaves a claim, never an orphan
        namespaces.create(att.netns)
        return True

    def _follow_moved_entries(self, plan: Plan, specs: Specs, records: dict[str, Record]) -> None:
        """An entry that moved to another spec file, unchanged: its record names the new file (the
        pass saves it), which the plan's messages and the pruning of broken files go by."""
        for step in plan.steps:
            rec, att = records.get(step.key), specs.attachments.get(step.key)
            if step.kind in ("noop", "backoff") and rec and att and rec.file != os.path.abspath(att.file):
                self.inventory.put(dataclasses.replace(rec, file=os.path.abspath(att.file)))

    def _records_from_cache(self, specs: Specs, records: dict[str, Record]) -> dict[str, Record]:
        """Records rebuilt from the result cache for desired attachments that have none (`adopt`)."""
        unrecorded = [att for key, att in specs.attachments.items() if key not in records]
        if not unrecorded:
            return {}
        return from_cache(unrecorded, specs, self.state_dir, lambda att: self._netlist(att, specs),
                          self.inventory.namespaces())

    def _netlist(self, att: Attachment, specs: Specs, requested: list[str] | None = None) -> NetworkConfigList:
        """The config an attachment's ADD runs with (host-local's dataDir filled in, once per pass
        and network; `requested`: its addresses asked for again)."""
        netlist = self._netlists.get(att.network)
        if netlist is None:
            netlist = self._netlists[att.network] = with_data_dir(specs.networks[att.network], self.data_dir)
        return with_requested_ips(netlist, requested) if requested else netlist

    def _add_intent(self, att: Attachment, specs: Specs, action: str, requested: list[str] | None = None) -> Intent:
        netlist = self._netlist(att, specs, requested)
        return Intent(
            att.key, action, network=att.network, container_id=att.id, ifname=att.ifname, netns=att.netns_path,
            cni_args=[list(p) for p in att.args], capability_args=att.capabilities,
            config_b64=base64.b64encode(netlist.raw).decode(),
        )

    def _runtime(self, att: Attachment) -> RuntimeConf:
        return RuntimeConf(att.id, att.netns_path, att.ifname, att.args, att.capabilities)

    def _add(self, att: Attachment, specs: Specs, requested: list[str] | None = None, action: str = "add") -> Pending:
        """ADD (verification comes later, for the whole batch); on failure undo what this call did and raise."""
        network = specs.networks[att.network]
        netlist = self._netlist(att, specs, requested)
        rt = self._runtime(att)
        intent = None  # journaled in the pass's batch, or on its own here
        if att.key not in self.journaled:
            intent = self._add_intent(att, specs, action, requested)
            self.journal.begin(intent)
        pending = Pending(att, netlist, rt)
        try:
            pending.created_netns = self._ensure_namespace(att, intent)
            result, pending.entry = self.runner.add_cached(netlist, rt, roll_back=True)
        except BaseException:
            self._undo(pending, delete=False)  # the chain rolled back what this ADD made, and only that
            raise
        pending.record = new_record(att, network, [ip.address for ip in result.ips],
                                    att.owns_netns or att.netns in self.inventory.namespaces())
        return pending

    def _undo(self, pending: Pending, delete: bool = True) -> None:
        """Roll back one ADD: DEL with the config it used (`delete`; not after a failed ADD, which
        rolled itself back: a DEL would also remove what was there before it), drop a namespace it
        created, clear its intent."""
        if delete:
            with contextlib.suppress(Exception):
                self.runner.delete(pending.netlist, pending.rt)
        if pending.created_netns:
            with contextlib.suppress(Exception):
                self.drop_namespace(pending.att.netns)
        self.journal.clear(pending.att.key)

    def _verify(self, batch: list[Pending]) -> None:
        """CHECK every ADD of the pass against the live kernel, retrying briefly while it settles.

        Each round reads every namespace once (shared snapshots), so verifying N attachments costs
        O(N) reads instead of one host dump per attachment. Passing ones are recorded; the rest are
        rolled back and their outcome turned into a failure.
        """
        remaining = {p.att.key: p for p in batch}
        drift: dict[str, list[str]] = {}
        for attempt in range(self.verify_retries):
            with namespaces.shared([None, *(p.rt.netns for p in remaining.values())]):
                verdicts = self._judge_all([p.record for p in remaining.values() if p.record is not None],
                                           fresh=_fresh(remaining.values()))
                for key, pending in list(remaining.items()):
                    found = verdicts[key]
                    if found:
                        drift[key] = found
                        continue
                    self._accept(pending)
                    del remaining[key]
            if not remaining:
                return
            if attempt < self.verify_retries - 1:
                time.sleep(self.verify_delay * (attempt + 1))
        for key, pending in remaining.items():
            self._undo(pending)
            if pending.outcome is not None:
                pending.outcome.result = "failed"
                pending.outcome.ips = []
                pending.outcome.error = "verification failed after ADD (rolled back): " + "; ".join(drift[key])
            log.error("%s: verification failed, rolled back: %s", key, "; ".join(drift[key]))

    def _accept(self, pending: Pending) -> None:
        """Record a verified ADD and drop its intent (the pass saves the records of its batch once)."""
        assert pending.record is not None
        self.inventory.put(pending.record)
        self._clear_intent(pending.att.key)

    def _clear_intent(self, key: str) -> None:
        """Drop `key`'s own intent entry, its staged record change saved first. An intent in the
        pass's batch stays until the pass has saved every record and synced (`_apply`)."""
        if key not in self.journaled:
            self.inventory.save()
        self.journal.clear(key)

    def _judging_workers(self, count: int) -> int:
        """How many processes judge `count` attachments (forking needs a single-threaded process)."""
        return 1 if threading.active_count() > 1 else min(self.workers, count // self.observe_per_worker)

    def _judge_all(self, records: list[Record], obs: Observation | None = None,
                   fresh: dict[str, Fresh] | None = None) -> dict[str, list[str]]:
        """judge() of each record (deep, inside the caller's shared reads), split over forked workers
        when there are many; a worker that fails has its slice judged here."""
        obs = obs if obs is not None else Observation()

        def judge_part(part: list[Record]) -> dict[str, list[str]]:
            return self._judge_here(part, obs, fresh)

        count = self._judging_workers(len(records))
        if count < 2:
            return judge_part(records)
        parts = [records[i::count] for i in range(count)]
        verdicts: dict[str, list[str]] = {}
        for part, got in zip(parts, fork_map(parts, judge_part), strict=True):
            if isinstance(got, WorkerFailed):
                log.warning("judging worker failed (%s); judging its %d attachments here", got, len(part))
                got = judge_part(part)
            verdicts.update(got)
        return verdicts

    def _judge_here(self, records: list[Record], obs: Observation | None = None,
                    fresh: dict[str, Fresh] | None = None) -> dict[str, list[str]]:
        """judge() of each record in this process (deep, inside the caller's shared reads); `fresh`:
        what this pass's ADDs wrote, by key, to judge against without reading it back."""
        obs = obs if obs is not None else Observation()
        fresh = fresh or {}
        return {r.key: judge(r, obs, self.runner, deep=True, fresh=fresh.get(r.key)) for r in records}

    @staticmethod
    def _delete_intent(key: str, rec: Record | None) -> Intent:
        network, cid, ifname = key.split("/")
        return Intent(key, "delete", network=network, container_id=cid, ifname=ifname,
                      netns=rec.netns_path if rec else "")

    def _delete(self, key: str, rec: Record | None, specs: Specs, journaled: bool = False,
                forget: bool = True) -> None:
        """DEL with the cached config (works when the network file is gone), then `_forget` it
        (`forget=False`: the caller does, once the DEL's batched firewall writes have landed)."""
        network, cid, ifname = key.split("/")
        if not journaled:
            self.journal.begin(self._delete_intent(key, rec))
        entry = cache.read(self.state_dir, network, cid, ifname)
        if entry is not None and entry.config:
            self.runner.delete_cached(entry, keep_cache=True)
        elif rec is not None and network in specs.networks:
            rt = RuntimeConf(cid, rec.netns_path, ifname)
            self.runner.delete(with_data_dir(specs.networks[network], self.data_dir), rt, keep_cache=True)
        if forget:
            self._forget(key)

    def _forget(self, key: str) -> None:
        """Drop a deleted attachment's cache entry, record and intent."""
        network, cid, ifname = key.split("/")
        cache.delete(self.state_dir, network, cid, ifname)
        self.inventory.drop(key)
        self._clear_intent(key)

    def _delete_run(self, steps: list[Step], specs: Specs, records: dict[str, Record]) -> list[Outcome]:
        """A run of DELs with their firewall writes in one commit per table.

        Each DEL's cache entry, record and intent stay until that commit has landed: if any write
        of it did not, every DEL of the run is done again on its own (DEL is idempotent, and the
        cache entries still hold the configs), so each outcome says what happened to that one.
        """
        with batched_writes() as firewall_errors:
            outcomes = [self._execute(step, specs, records, {}, forget=False) for step in steps]
        if firewall_errors:
            log.warning("firewall writes of %d DELs not applied together (%s); deleting one by one",
                        len(steps), "; ".join(firewall_errors))
            return [self._execute(step, specs, records, {}) for step in steps]
        for step, outcome in zip(steps, outcomes, strict=True):
            if outcome.result == "ok":
                self._forget(step.key)
        return outcomes

    def _pending(self, pending: Pending, outcome: Outcome) -> Outcome:
        assert pending.record is not None
        outcome.ips = list(pending.record.ips)
        pending.outcome = outcome
        self.batch.append(pending)
        return outcome

    def _execute(self, step: Step, specs: Specs, records: dict[str, Record], status: dict[str, Any],
                 forget: bool = True) -> Outcome:
        rec = records.get(step.key)
        att = specs.attachments.get(step.key)
        prev = status.get(step.key, {})
        try:
            if step.kind == "delete":
                self._delete(step.key, rec, specs, journaled=step.key in self.journaled, forget=forget)
                return Outcome(step.key, "delete", "ok")
            assert att is not None
            if step.kind == "add":
                return self._pending(self._add(att, specs), Outcome(step.key, "add", "ok"))
            self._delete(step.key, rec, specs, journaled=step.key in self.journaled)
            if step.kind == "replace":
                return self._pending(self._add(att, specs, action="replace"), Outcome(step.key, "replace", "ok"))
            requested = rec.ips if rec else []
            try:
                pending = self._add(att, specs, requested, action="repair")
            except CNIError as err:
                log.warning("%s: repair with its old address failed (%s); adding afresh", step.key, err)
                pending = self._add(att, specs, action="repair")
            out = self._pending(pending, Outcome(step.key, "repair", "ok", error="repaired: " + "; ".join(step.drift)))
            repairs = int(prev.get("repairs", 0)) + 1
            if repairs >= BACKOFF_AFTER:
                delay = min(self.backoff_base * 2 ** (repairs - BACKOFF_AFTER), 3600.0)
                out.result, out.error = "failing", f"drift keeps coming back ({repairs} repairs): " + "; ".join(step.drift)
                prev["backoff_until"] = time.time() + delay
            prev["repairs"] = repairs
            return out
        except Exception as err:  # one failing attachment never blocks the others
            log.error("%s: %s failed: %s", step.key, step.kind, err)
            return Outcome(step.key, step.kind, "failed", error=str(err))

    def apply(self) -> PassReport:
        """One full pass. The caller holds the state lock."""
        self.inventory.ensure()
        # recovery outside the pass's netlink session: it may delete a namespace the pass then
        # creates again under the same name, and a handle cached for the old one must not survive
        recovered = self.recover()
        # every step of a pass is journaled first (one fsync'd batch) and the pass runs syncfs on the
        # state directory before it drops the batch: the result cache, records and host-local
        # reservations written on that filesystem meanwhile need no fsync each
        try:
            with namespaces.session(), durable.deferred(self.state_dir):
                return self._apply(recovered)
        finally:
            self.inventory.discard()  # saved by a pass that finished; undone from the journal otherwise

    def _apply(self, recovered: list[str]) -> PassReport:
        specs = self.load()
        self._netlists = {}
        records = self.inventory.records()
        for rec in self._records_from_cache(specs, records).values():
            self.inventory.put(rec)  # saved with the pass's records
            records[rec.key] = rec
        plan, _obs = self.plan(specs, records)
        self._follow_moved_entries(plan, specs, records)
        report = PassReport(plan, recovered=recovered)
        status = self.inventory.status()
        per_key: dict[str, Any] = status["attachments"]
        todo = plan.actions
        bar = Progress(len(todo), "apply", enabled=self.show_progress)
        self.batch = []
        batch_file, doomed = self._begin_pass(todo, records, specs)
        parallel = self._parallel_adds(todo)
        for kind, run in itertools.groupby((s for s in todo if s.key not in parallel), key=lambda s: s.kind):
            steps = list(run)
            for step in steps:
                per_key.setdefault(step.key, {})
            if kind == "delete":
                outcomes = self._delete_run(steps, specs, records)
            elif kind == "add":  # committed before `_verify` CHECKs them
                outcomes = self._adds_batched(steps, lambda step: self._execute(step, specs, records, per_key))
            else:
                outcomes = [self._execute(step, specs, records, per_key) for step in steps]
            for step, outcome in zip(steps, outcomes, strict=True):
                report.outcomes.append(outcome)
                bar.step(f"{step.kind} {step.key}", outcome.result != "failed")
        if parallel:
            for step, outcome in self._add_in_workers([s for s in todo if s.key in parallel], specs, records):
                per_key.setdefault(step.key, {})
                report.outcomes.append(outcome)
                bar.step(f"{step.kind} {step.key}", outcome.result != "failed")
        bar.close()
        if self.batch:
            self._verify(self.batch)
        self.batch = []
        self.inventory.release_namespaces(doomed)
        self.inventory.save()
        if batch_file is not None:
            self.inventory.sync()  # records and result caches written without fsync reach the disk before their intents go
        if not self.keep_journal:
            self.journal.clear_batch(batch_file)
        self.journaled, self.claimed, self.keep_journal = set(), set(), False
        if self.vanishing:  # the kernel finishes the deleted namespaces' teardown in the background
            left = namespaces.wait_links_gone(self.vanishing)
            if left:
                log.warning("host links still present after their namespace was deleted: %s", sorted(left))
            self.vanishing = set()
        for outcome in report.outcomes:
            if outcome.action == "delete" and outcome.result == "ok":
                per_key.pop(outcome.key, None)
            else:
                per_key.setdefault(outcome.key, {}).update(vars(outcome), ips=list(outcome.ips))  # flat: no asdict deep copy
        for step in plan.steps:
            entry = per_key.setdefault(step.key, {}) if step.kind != "delete" else None
            if entry is None:
                continue
            if step.kind == "noop":
                entry.update(repairs=0, backoff_until=0)
                if entry.get("result") != "ok":  # in sync now: a failure, or a broken spec, is over
                    entry.update(action="noop", result="ok", error="", time=time.time(), ips=list(records[step.key].ips))
            elif step.kind == "backoff":
                entry.update(result="failing", error="repair backing off: " + "; ".join(step.drift), time=time.time())
                report.outcomes.append(Outcome(step.key, "backoff", "failing", entry["error"]))
            elif step.kind == "kept":
                entry.update(result="kept", error=step.why)
        current = self.inventory.records() if todo else records
        self._prune_namespaces(specs, current)
        report.finished = time.time()
        status["last_pass"] = report.summary()
        known = set(current) | set(specs.attachments)
        status["attachments"] = {k: v for k, v in per_key.items() if k in known}
        self.inventory.save_status(status)
        return report

    def _parallel_adds(self, todo: list[Step]) -> set[str]:
        """The ADDs of this pass that may run in worker processes: every one but the first of each network.

        Distinct attachments' ADDs may run concurrently: runtimes call CNI plugins so, and the plugins
        lock what attachments share (the IPAM store's flock, the xtables lock, nftables' atomic
        transactions). The first ADD of each network runs here first, so bridges and per-network
        chains exist before the workers start. Not when the process has other threads (forking one
        could copy a lock another thread holds), nor for a handful of ADDs.
        """
        if self.workers < 2 or threading.active_count() > 1:
            return set()
        seen: set[str] = set()
        rest: set[str] = set()
        for step in todo:
            if step.kind == "add":
                (rest if step.network in seen else seen).add(step.key if step.network in seen else step.network)
        return rest if len(rest) >= PARALLEL_MIN else set()

    @staticmethod
    def _adds_batched(steps: Iterable[Step], run: Callable[[Step], T]) -> list[T]:
        """`run(step)` for each ADD, their firewall writes committed once per table at the end. A
        write that did not land is logged: the verifying CHECKs find what is missing, and those
        ADDs are retried or rolled back."""
        with batched_writes() as firewall_errors:
            out = [run(step) for step in steps]
        if firewall_errors:
            log.warning("firewall writes of %d ADDs not applied: %s", len(out), "; ".join(firewall_errors))
        return out

    def _add_slice(self, steps: Iterable[Step], specs: Specs, records: dict[str, Record],
                   carried: Sequence[Pending] = ()) -> list[SliceResult]:
        """One worker's ADDs (taken from the pass's queue as it goes), their firewall writes committed
        once per table at the end, then one verifying CHECK of each, and of the `carried` ADDs (done
        before the workers started), over a single fresh read of their namespaces. Those in sync
        (verdict []) are accepted here (the parent saves their records); the carried ones left
        in `self.batch`, and the workers' others, are retried by `_verify`."""
        def one(step: Step) -> tuple[Outcome, Pending | None]:
            self.batch = []
            return self._execute(step, specs, records, {}), self.batch[0] if self.batch else None

        done = self._adds_batched(steps, one)
        checked = [*(p for _, p in done if p is not None), *carried]
        verdicts: dict[str, list[str]] = {}
        if checked:
            with namespaces.shared([None, *(p.rt.netns for p in checked)]):
                verdicts = self._judge_here([p.record for p in checked if p.record is not None],
                                            fresh=_fresh(checked))
        for pending in checked:  # a verified ADD is accepted here; the parent saves the records
            if verdicts.get(pending.att.key) == []:
                self._accept(pending)
        self.batch = [p for p in carried if verdicts.get(p.att.key) != []]  # for `_verify`
        return [(o, p.record if p else None, p.created_netns if p else False,
                 verdicts.get(p.att.key) if p else None) for o, p in done]

    def _add_in_workers(self, steps: list[Step], specs: Specs, records: dict[str, Record]) -> list[tuple[Step, Outcome]]:
        """ADD `steps` over `self.workers` processes (this one included), each verifying its own.

        The processes take the steps one at a time from a shared queue (`workers.fork_queue`). Each
        forked worker runs its share with its own netlink handles, CHECKs its ADDs over one read of
        their namespaces, and sends back the outcomes, records and verdicts; the records of those in
        sync are staged here, saved with the pass's. The others join this pass's batch, which
        `_verify` retries and rolls back. A worker that dies leaves its steps failed and the pass's
        journal batch in place, so the next pass undoes whatever it did.
        """
        carried, self.batch = self.batch, []  # verified with this process's share (index 0)
        count = min(self.workers, len(steps))

        def share(mine: Iterator[Step], index: int) -> list[SliceResult]:
            return self._add_slice(mine, specs, records, carried if index == 0 else ())

        results: list[tuple[Step, SliceResult]] = []
        for step, got in zip(steps, fork_queue(steps, count, share), strict=True):
            if isinstance(got, WorkerFailed):
                self.keep_journal = True
                got = (Outcome(step.key, step.kind, "failed", error=f"worker failed: {got}"), None, False, None)
            results.append((step, got))
        # self.batch: the carried ADDs that did not verify (set by this process's share)
        out: list[tuple[Step, Outcome]] = []
        for step, (outcome, record, created, verdict) in results:
            if record is not None and outcome.result != "failed" and verdict == []:  # verified by its worker
                self.inventory.put(record)
            elif record is not None and outcome.result != "failed":
                att = specs.attachments[step.key]
                netlist = self._netlist(att, specs)
                self.batch.append(Pending(att, netlist, self._runtime(att), created, record, outcome))
            out.append((step, outcome))
        return out

    def _begin_pass(
        self, todo: list[Step], records: dict[str, Record], specs: Specs
    ) -> tuple[Path | None, set[str]]:
        """Journal every step of the pass in one entry (one fsync), then delete the namespaces the deletions empty.

        Namespaces the ADDs will create are claimed up front, in one write. Recovery treats each
        batched intent as its own entry: a crash undoes every ADD of the pass (verified or not), and
        the next pass adds them again.

        A namespace we created whose every attachment goes in this pass is deleted *before* the
        DELs: the kernel then removes the veth pairs inside it as part of the namespace's teardown
        (batched, asynchronous), where a DEL would delete each link synchronously (~20 ms apiece).
        The DELs that follow run without the namespace, as CNI requires plugins to support: IPAM is
        released and host-side state (masquerade rules, ...) removed from the cached result.
        """
        deleting = {s.key for s in todo if s.kind == "delete"}
        intents = [self._delete_intent(k, records.get(k)) for k in sorted(deleting)]
        creating: set[str] = set()
        for step in todo:
            att = specs.attachments.get(step.key)
            if step.kind == "delete" or att is None:
                continue
            rec = records.get(step.key)
            intent = self._add_intent(att, specs, step.kind, rec.ips if rec and step.kind == "repair" else None)
            if att.owns_netns and att.netns not in creating and not namespaces.exists(att.netns):
                if namespaces.clear_stale(att.netns):  # here, before any ADD of the pass creates one
                    log.warning("netns %s: removed its file, on which no namespace was mounted", att.netns)
                intent.netns_name = att.netns
                creating.add(att.netns)
            intents.append(intent)
        if creating:  # claim first: a crash leaves a claim, never an orphan
            self.inventory.claim_namespaces(creating)
        self.claimed = creating
        batch = self.journal.begin_batch(intents)
        self.journaled = {i.key for i in intents}
        if not deleting:
            return batch, set()
        owned = self.inventory.namespaces()
        still = {a.netns for a in specs.attachments.values()}
        still |= {r.netns for k, r in records.items() if k not in deleting}
        candidates: dict[str, bool] = {}
        for k in sorted(deleting):
            rec = records.get(k)
            if rec is None or not rec.owns_netns or rec.netns not in owned or rec.netns in still:
                continue
            candidates[rec.netns] = candidates.get(rec.netns, True) and self._del_without_netns_ok(rec)
        doomed = {name for name, ok in candidates.items() if ok}
        host_ends: set[str] = set()  # host sides of veth pairs that vanish with the doomed namespaces
        for k in deleting:
            rec = records.get(k)
            if rec is not None and rec.netns in doomed:
                entry = cache.read(self.state_dir, rec.network, rec.id, rec.ifname)
                result = entry.result if entry is not None else None
                for iface in (result or {}).get("interfaces") or []:
                    if isinstance(iface, dict) and iface.get("name") and not iface.get("sandbox"):
                        host_ends.add(str(iface["name"]))
        try:
            self.vanishing = namespaces.veths(host_ends)
        except OSError:
            self.vanishing = set()
        gone = set()
        for name in sorted(doomed):
            try:
                namespaces.delete(name)
                gone.add(name)
            except OSError as err:
                log.warning("cannot delete namespace %s: %s", name, err)
        return batch, gone

    def _del_without_netns_ok(self, rec: Record) -> bool:
        """True when every plugin of the attachment's cached chain is ours and undoes its host side without the netns.

        The reference bridge and ptp, for one, skip the masquerade teardown when the namespace is gone,
        and dhcp or host-device need it to release a lease or hand a device back: those keep the order
        "DEL, then delete the namespace".
        """
        if self.runner.exec_mode or os.environ.get("RECONCILER_EXEC_DELEGATES") == "1":
            return False
        entry = cache.read(self.state_dir, rec.network, rec.id, rec.ifname)
        if entry is None or not entry.config:
            return False
        try:
            netlist = conflist_from_bytes(entry.config, f"cache:{rec.network}")
        except (CNIError, ValueError):
            return False
        for plugin in netlist.plugins:
            kinds = [str(plugin.get("type") or "")]
            ipam = plugin.get("ipam")
            if isinstance(ipam, dict) and ipam.get("type"):
                kinds.append(str(ipam["type"]))
            if any(k not in DEL_WITHOUT_NETNS or not registry.module_for(k) for k in kinds):
                return False
        return True

    def _prune_namespaces(self, specs: Specs, records: dict[str, Record]) -> None:
        needed = {a.netns for a in specs.attachments.values()}
        needed |= {r.netns for r in records.values()}
        for name in sorted(self.inventory.namespaces() - needed):
            try:
                self.drop_namespace(name)
            except OSError as err:
                log.warning("cannot delete namespace %s: %s", name, err)
