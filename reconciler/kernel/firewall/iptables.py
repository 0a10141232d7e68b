"""Legacy iptables (x_tables) through python-iptables, one batched session per table.

A `Session` reads one table of one family once, applies every change of an
operation in memory (autocommit off) and commits them in one go. Rules are
written as iptables argument lists (``["-s", "10.0.0.2/32", "-j", "ACCEPT"]``)
and turned into python-iptables objects here, so callers never touch `iptc`.
Sessions are serialised by a lock (libxtables state is process-wide); `transact`
runs one inside a netns (see nsexec), and inside `shared_reads()` read-only
operations reuse one read of each table.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import shlex
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from reconciler.kernel import readscope
from reconciler.kernel.firewall import xtnft, xtregistry
from reconciler.kernel.firewall.base import BackendUnavailable, FirewallError, batch_scope, each_family
from reconciler.kernel.firewall.nsexec import netns_path, run_in_netns

T = TypeVar("T")
Args = Sequence[str]
_LOCK = threading.Lock()
_FLAGS = {"-s": "src", "--source": "src", "-d": "dst", "--destination": "dst",
          "-p": "protocol", "--protocol": "protocol", "-i": "in_interface",
          "--in-interface": "in_interface", "-o": "out_interface", "--out-interface": "out_interface"}


def _iptc() -> Any:
    try:
        return xtregistry.import_iptc()  # heavy: loads libxtables; only when a firewall op runs
    except Exception as exc:  # ImportError or a missing shared library
        raise BackendUnavailable(f"python-iptables unusable: {exc}") from exc


def render(args: Args) -> str:
    """An argument list as a readable iptables command fragment."""
    return " ".join(shlex.quote(a) for a in args)


def _is_option_value(tok: str) -> bool:
    return tok != "!" and not (tok.startswith("-") and len(tok) > 1 and not tok[1].isdigit())


class Session:
    """One table of one family, read once; changes are committed together."""

    def __init__(self, family: int, table: str) -> None:
        iptc = _iptc()
        xtregistry.preload()
        self.family = family
        self.table_name = table
        self._iptc = iptc
        cls = iptc.Table if family == 4 else iptc.Table6
        try:
            # a private Table (python-iptables' own cache holds one per name, process-wide)
            self._table = object.__new__(cls)
            self._table._init(table, False)
        except iptc.IPTCError as exc:
            raise BackendUnavailable(f"iptables-legacy table {table} (IPv{family}): {exc}") from exc
        # python-iptables tells a jump to a user chain from an extension target by asking every
        # table of its process-wide cache (stale, maybe another netns); ours answer from this one
        base = iptc.Rule if family == 4 else iptc.Rule6
        self._rule_cls = type("SessionRule", (base,), {"tables": property(lambda _r, t=self._table: [t])})
        self._ents: dict[str, list[tuple[Any, str]]] = {}
        self._rules: dict[tuple[str, int], Any] = {}
        self.dirty = False
        self.changes = 0

    # --- reading -----------------------------------------------------------------
    def chains(self) -> set[str]:
        return {c.name for c in self._table.chains}

    def has_chain(self, chain: str) -> bool:
        return bool(self._table.is_chain(chain))

    def _entries(self, chain: str) -> list[tuple[Any, str]]:
        """(raw entry, target name) of each rule, read once; rules are decoded only when needed."""
        if chain not in self._ents:
            out: list[tuple[Any, str]] = []
            if self.has_chain(chain):
                entry = self._table.first_rule(chain)
                while entry:
                    name = self._table.get_target(entry)
                    out.append((entry, name.decode() if isinstance(name, bytes) else (name or "")))
                    entry = self._table.next_rule(entry)
            self._ents[chain] = out
        return self._ents[chain]

    def _rule_at(self, chain: str, pos: int) -> Any:
        key = (chain, pos)
        if key not in self._rules:
            self._rules[key] = self._rule_cls(self._entries(chain)[pos][0], self._chain(chain))
        return self._rules[key]

    def rules(self, chain: str) -> list[Any]:
        """The chain's rules (python-iptables objects), read once per session."""
        return [self._rule_at(chain, i) for i in range(len(self._entries(chain)))]

    def rules_to(self, chain: str, target: str) -> list[Any]:
        """Only the rules of `chain` whose target is `target` (cheap on long chains)."""
        return [self._rule_at(chain, i) for i, (_, t) in enumerate(self._entries(chain)) if t == target]

    @staticmethod
    def comment_of(rule: Any) -> str | None:
        """The text of a rule's `-m comment`, read straight from the match buffer."""
        for match in rule.matches:
            if match.name == "comment":
                return _comment_from_buf(match)
        return None

    @staticmethod
    def target_of(rule: Any) -> str:
        target = rule.target
        return target.name if target is not None else ""

    def build(self, args: Args) -> Any:
        """Argument list -> python-iptables Rule (ValueError naming the bad token)."""
        iptc = self._iptc
        rule = self._rule_cls()
        current: Any = None
        invert = False
        i = 0
        try:
            while i < len(args):
                tok = args[i]
                i += 1
                if tok == "!":
                    invert = True
                    continue
                neg = "!" if invert else ""
                invert = False
                if tok in _FLAGS:
                    setattr(rule, _FLAGS[tok], neg + args[i])
                    i += 1
                elif tok in ("-m", "--match"):
                    current = rule.create_match(args[i])
                    i += 1
                elif tok in ("-j", "--jump", "-g", "--goto"):
                    current = rule.create_target(args[i], goto=tok in ("-g", "--goto"))
                    i += 1
                elif tok.startswith("--") and current is not None:
                    values = []
                    while i < len(args) and _is_option_value(args[i]):
                        values.append(args[i])
                        i += 1
                    current.parse(tok[2:], neg + " ".join(values))
                else:
                    raise ValueError(f"unsupported iptables argument {tok!r}")
        except IndexError as exc:
            raise ValueError(f"missing value after {args[i - 1]!r} in {render(args)}") from exc
        except (iptc.IPTCError, iptc.xtables.XTablesError) as exc:
            raise ValueError(f"invalid iptables rule {render(args)}: {exc}") from exc
        return rule

    def same(self, existing: Any, wanted: Any) -> bool:
        """Equal rules: addresses, interfaces, matches (by buffer), target name and saved options."""
        for attr in ("src", "dst", "protocol", "in_interface", "out_interface"):
            if getattr(existing, attr) != getattr(wanted, attr):
                return False
        have, want = existing.matches, wanted.matches
        if len(have) != len(want) or any(a != b for a, b in zip(have, want, strict=True)):
            return False
        if self.target_of(existing) != self.target_of(wanted):
            return False
        return bool(_target_params(existing) == _target_params(wanted))

    def index(self, chain: str, args: Args) -> int:
        """Position of the first rule equal to `args` in `chain`, or -1."""
        wanted = self.build(args)
        name = self.target_of(wanted)
        for pos, (_, target) in enumerate(self._entries(chain)):
            if target == name and self.same(self._rule_at(chain, pos), wanted):
                return pos
        return -1

    def has(self, chain: str, args: Args) -> bool:
        return self.index(chain, args) >= 0

    # --- writing -----------------------------------------------------------------
    def _chain(self, chain: str) -> Any:
        return self._iptc.Chain(self._table, chain)

    def _changed(self, chain: str) -> None:
        self.dirty = True
        self.changes += 1
        self._ents.pop(chain, None)
        self._rules = {k: v for k, v in self._rules.items() if k[0] != chain}

    def ensure_chain(self, chain: str) -> None:
        if not self.has_chain(chain):
            self._table.create_chain(chain)
            self._changed(chain)

    def append_unique(self, chain: str, args: Args) -> bool:
        if self.has(chain, args):
            return False
        self._chain(chain).append_rule(self.build(args))
        self._changed(chain)
        return True

    def insert_unique(self, chain: str, args: Args, position: int = 0) -> bool:
        if self.has(chain, args):
            return False
        self._chain(chain).insert_rule(self.build(args), position)
        self._changed(chain)
        return True

    def replace_rules(self, chain: str, rules: Sequence[Args]) -> bool:
        """Make `chain` hold exactly `rules`, in order; False if it already did."""
        have = self.rules(chain)
        wanted = [self.build(r) for r in rules]
        if len(have) == len(wanted) and all(self.same(h, w) for h, w in zip(have, wanted, strict=True)):
            return False
        if have:
            self._table.flush_entries(chain)
        for rule in wanted:
            self._chain(chain).append_rule(rule)
        self._changed(chain)
        return True

    def delete_where(self, chain: str, pred: Callable[[Any], bool]) -> int:
        """Delete every rule of `chain` for which `pred(rule)` holds; returns the count."""
        victims = [r for r in self.rules(chain) if pred(r)]
        for rule in victims:
            self._chain(chain).delete_rule(rule)
        if victims:
            self._changed(chain)
        return len(victims)

    def remove(self, chain: str, rule: Any) -> None:
        """Delete one rule object read from `chain`."""
        self._chain(chain).delete_rule(rule)
        self._changed(chain)

    def delete(self, chain: str, args: Args) -> int:
        wanted = self.build(args)
        return self.delete_where(chain, lambda r: self.same(r, wanted))

    def delete_jumps(self, chain: str, target: str) -> int:
        victims = self.rules_to(chain, target)
        for rule in victims:
            self._chain(chain).delete_rule(rule)
        if victims:
            self._changed(chain)
        return len(victims)

    def flush_delete_chain(self, chain: str) -> bool:
        if not self.has_chain(chain):
            return False
        self._table.flush_entries(chain)
        self._table.delete_chain(chain)
        self._changed(chain)
        return True

    def commit(self) -> None:
        if self.dirty:
            try:
                self._table.commit()
            except self._iptc.IPTCError as exc:
                raise FirewallError(f"iptables-legacy commit of {self.table_name} (IPv{self.family}): {exc}") from exc
            self.dirty = False

    def close(self) -> None:
        self._table.close()

    def reuse(self) -> None:
        """Forget decoded rule objects before another operation uses this (unchanged) session."""
        self._rules.clear()


def _target_params(rule: Any) -> dict[str, Any]:
    target = rule.target
    if target is None or target.name in ("", "ACCEPT", "DROP", "RETURN", "QUEUE") or target.name.startswith("CNI-"):
        return {}
    try:
        return dict(target.get_all_parameters())
    except Exception:
        return {}


def _comment_from_buf(match: Any) -> str | None:
    try:
        from iptc.xtables import xt_entry_match

        base = ctypes.sizeof(xt_entry_match)
        raw = bytes(match.match_buf[base : base + 256])
        return raw.split(b"\0", 1)[0].decode(errors="replace")
    except Exception:
        return None


Key = tuple[str, int, str]  # (netns path or "", family, table)
SLOT = "iptables-tables"  # this module's cache in a `kernel.readscope` scope: Key -> Session


def shared_reads() -> contextlib.AbstractContextManager[None]:
    """Within the block each (netns, family, table) is read once and reused by read-only operations.

    For a pass of CHECKs (the reconciler's observe): N attachments cost one table read, not N.
    An operation that changes a table commits it and drops the shared copy, so later readers
    see the change. The kernel layer's `snapshot.shared()` block turns this on too.
    """
    return readscope.scope(SLOT)


def _shared() -> dict[Key, Session] | None:
    return readscope.slot(SLOT)


@dataclass
class WriteBatch:
    """Sessions kept open by `batched_writes()` and the operations that changed each (for replay)."""

    sessions: dict[Key, Session] = field(default_factory=dict)
    ops: dict[Key, list[Callable[[Session], object]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


_BATCH: contextvars.ContextVar[WriteBatch | None] = contextvars.ContextVar("reconciler_iptables_batch",
                                                                           default=None)


@contextlib.contextmanager
def batched_writes() -> Iterator[WriteBatch]:
    """Keep each table's session open across the block's operations (autocommit off) and commit
    each table once at its end.

    Operations see the changes made before them (one in-memory table per session). A commit the
    kernel refuses because the table changed since it was read is redone on a fresh read by
    replaying the operations; any other failure commits each operation on its own, and what still
    fails is listed in `errors` (nothing is raised: the caller verifies what it applied).
    """
    with batch_scope(_BATCH, WriteBatch, flush) as batch:
        yield batch


def _replayed(family: int, table: str, ops: list[Callable[[Session], object]]) -> Session:
    session = Session(family, table)
    try:
        for op in ops:
            session.reuse()
            op(session)
    except BaseException:
        session.close()
        raise
    return session


def flush(batch: WriteBatch) -> None:
    """Commit every session of a batch (see `batched_writes`)."""
    cache = _shared()
    for key in sorted(set(batch.sessions) | set(batch.ops)):
        session = batch.sessions.pop(key, None)
        ops = batch.ops.pop(key, [])
        if cache is not None:
            cache.pop(key, None)  # shared reads of this table are stale now
        if not ops:
            if session is not None:
                session.close()
            continue

        def body(first: Session | None = session, ops: list[Callable[[Session], object]] = ops,
                 key: Key = key) -> None:
            with _LOCK, _xtables_lock():
                if _commit_all(first, key, ops) is None:
                    return
                for op in ops:  # the combined commit failed: each operation alone
                    error = _commit_all(None, key, [op])
                    if error is not None:
                        batch.errors.append(f"iptables-legacy {key[2]} (IPv{key[1]}): {error}")

        try:
            run_in_netns(key[0] or None, body)
        except (OSError, FirewallError) as exc:
            batch.errors.append(f"iptables-legacy {key[2]} (IPv{key[1]}) in {key[0] or 'this namespace'}: {exc}")


def _commit_all(session: Session | None, key: Key, ops: list[Callable[[Session], object]]) -> str | None:
    """Commit `session` (or `ops` replayed on a fresh read), redone on a fresh read while the
    kernel says the table changed since it was read. None when committed, else why not."""
    try:
        for tries in range(4):
            if session is None:
                session = _replayed(key[1], key[2], ops)
            try:
                session.commit()
                return None
            except FirewallError as exc:
                if "temporarily unavailable" not in str(exc) or tries == 3:
                    raise
            session.close()
            session = None
    except (FirewallError, BackendUnavailable) as exc:
        return str(exc)
    finally:
        if session is not None:
            session.close()
    return "not committed"


def _transact_batched(batch: WriteBatch, key: Key, fn: Callable[[Session], T]) -> T:
    """One operation on the batch's open session of `key` (caller: inside the netns, locks held)."""
    session = batch.sessions.get(key)
    if session is None:
        session = batch.sessions[key] = Session(key[1], key[2])
    session.reuse()
    before = session.changes
    try:
        result = fn(session)
    except BaseException:
        if session.changes != before:  # half an operation is in the session: rebuild it without
            session.close()
            del batch.sessions[key]
            with contextlib.suppress(FirewallError, BackendUnavailable):  # else flush replays the ops
                batch.sessions[key] = _replayed(key[1], key[2], batch.ops.get(key, []))
        raise
    if session.changes != before:
        batch.ops.setdefault(key, []).append(fn)
    return result


def transact(netns: str | None, family: int, table: str, fn: Callable[[Session], T],
             existing_only: bool = False) -> T:
    """Run `fn(session)` on one table in `netns`; commit its changes if it returns normally
    (inside `batched_writes()`: at the end of that block).

    `existing_only` (teardown, GC, lookups): raise BackendUnavailable instead of letting
    python-iptables instantiate a legacy table that does not exist yet."""
    cache = _shared()  # read in the caller's thread: context variables do not follow into threads
    batch = _BATCH.get()
    key = (netns_path(netns) if netns else "", family, table)
    if batch is not None:
        def batched() -> T:
            if existing_only and key not in batch.sessions and not xtnft.legacy_here(family, table):
                raise BackendUnavailable(f"no legacy IPv{family} {table} table here")
            with _LOCK, _xtables_lock():
                return _transact_batched(batch, key, fn)

        return run_in_netns(netns, batched)

    def attempt(session: Session) -> tuple[T, bool]:
        result = fn(session)
        if session.dirty:
            session.commit()
            return result, False
        return result, cache is not None

    def body() -> T:
        if existing_only and not xtnft.legacy_here(family, table):
            raise BackendUnavailable(f"no legacy IPv{family} {table} table here")
        with _LOCK, _xtables_lock():
            session = cache.pop(key, None) if cache is not None else None
            if session is not None:
                session.reuse()
            for tries in range(4):
                session = session or Session(family, table)
                keep = False
                try:
                    result, keep = attempt(session)
                    return result
                except FirewallError as exc:
                    # the table changed since it was read (a shared copy, or another writer
                    # without the lock): read it again and redo the in-memory changes
                    if "temporarily unavailable" not in str(exc) or tries == 3:
                        raise
                finally:
                    if keep and cache is not None:
                        cache[key] = session
                    else:
                        session.close()
                session = None
            raise AssertionError("unreachable")

    return run_in_netns(netns, body)


def in_each_family(netns: str | None, table: str, fn: Callable[[Session], T]) -> list[T]:
    """`fn(session)` on `table` of each IP family whose legacy table exists in `netns`; the results,
    IPv4's first. For teardown, GC and lookups: they never make a table (see `transact`)."""
    return each_family(transact, netns, table, fn)


@contextlib.contextmanager
def _xtables_lock() -> Iterator[None]:
    """The lock iptables(-legacy) itself takes (`-w`), so we never interleave with it."""
    import fcntl
    import os

    try:
        fd = os.open("/run/xtables.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def usable(family: int = 4, netns: str | None = None) -> bool:
    """True if legacy iptables for `family` works here (library present, nat table loads)."""
    try:
        transact(netns, family, "nat", lambda s: None)
    except (BackendUnavailable, FirewallError, OSError):
        return False
    return True
