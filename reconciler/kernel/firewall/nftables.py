"""nftables through libnftables' JSON API (a small ctypes binding).

Why this and not the alternatives: libnftables is the library the `nft` tool
itself is built on, so its JSON schema is stable and complete (nat, fib,
masquerade, comments) and it is already on every host that has nftables
(Debian `libnftables1`). pyroute2's nftables support is a low-level netlink
message layer without an expression compiler (no fib/nat/masquerade
builders, sparse documentation), and Debian's `python3-nftables` is a thin
wrapper of the same library that lives outside our virtualenv, so ~80 lines of
ctypes are both the smaller dependency and the better-kept path.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from reconciler.kernel import netns as nsmod
from reconciler.kernel import readscope
from reconciler.kernel.firewall.base import BackendUnavailable, FirewallError, batch_scope
from reconciler.kernel.firewall.nsexec import netns_path, run_in_netns

T = TypeVar("T")
OUTPUT_HANDLE = 1 << 3
OUTPUT_JSON = 1 << 4
_lib: ctypes.CDLL | None = None
_LIB_LOCK = threading.Lock()


def _library() -> ctypes.CDLL:
    global _lib
    with _LIB_LOCK:
        if _lib is None:
            try:
                lib = ctypes.CDLL("libnftables.so.1")
            except OSError as exc:
                raise BackendUnavailable(f"libnftables not found: {exc}") from exc
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
            _lib = lib
        return _lib


# Idle libnftables contexts of this process's own network namespace (the reconciler's and the
# daemon's workers' hot case): freeing a context drops its ruleset cache, which costs O(ruleset)
# (~2.4 ms with 100 attachments' masquerade rules). The library revalidates its cache against the
# ruleset's generation on every command, so reusing a context is safe. Contexts made in any other
# namespace are freed as before: their sockets would keep that namespace alive.
PoolKey = tuple[int, tuple[int, int]]  # (pid: a forked child never takes its parent's, namespace identity)
_IDLE: dict[PoolKey, list[int]] = {}
_IDLE_LOCK = threading.Lock()
IDLE_PER_NAMESPACE = 4


def _pool_key() -> PoolKey | None:
    """Where this thread's contexts are pooled; None when it is not in the process's own namespace."""
    here = nsmod.thread_identity()
    return (os.getpid(), here) if here is not None and here == nsmod.identity(None) else None


def _take_context(lib: ctypes.CDLL, key: PoolKey | None) -> int:
    """An idle context of pool `key`, or a new one."""
    if key is not None:
        with _IDLE_LOCK:
            idle = _IDLE.get(key)
            if idle:
                return idle.pop()
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise BackendUnavailable("nft_ctx_new failed")
    lib.nft_ctx_output_set_flags(ctx, OUTPUT_JSON | OUTPUT_HANDLE)
    lib.nft_ctx_buffer_output(ctx)
    lib.nft_ctx_buffer_error(ctx)
    return int(ctx)


def _give_back_context(lib: ctypes.CDLL, ctx: int, key: PoolKey | None) -> None:
    """Keep `ctx` in pool `key` for the next transaction (a few at most); else free it."""
    if key is not None:
        with _IDLE_LOCK:
            idle = _IDLE.setdefault(key, [])
            if len(idle) < IDLE_PER_NAMESPACE:
                idle.append(ctx)
                return
    lib.nft_ctx_free(ctx)


class NftNotFound(FirewallError):
    """The table/chain asked for does not exist."""


@dataclass
class TableView:
    """One table as listed: chains by name and their rules (JSON objects with handles)."""

    family: str
    name: str
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)
    rules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def chain_rules(self, chain: str) -> list[dict[str, Any]]:
        return self.rules.get(chain, [])


ViewCache = dict[tuple[str, str, str], "TableView | None"]


@dataclass
class WriteBatch:
    """Writes queued inside `batched_writes()`, per namespace in order: JSON command lists and nft
    scripts (libnftables takes one language per call), and the table listings the block read."""

    json_groups: dict[str, list[list[dict[str, Any]]]] = field(default_factory=dict)
    scripts: dict[str, list[str]] = field(default_factory=dict)
    views: ViewCache = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class Nft:
    """A libnftables context, made on first use (in the netns it should act on).

    With `cache` (a pass's shared reads) `table()` answers from one listing per
    (netns, family, table); any change made through this object drops that netns's copies.
    """

    def __init__(self, cache: ViewCache | None = None, ns_key: str = "", batch: WriteBatch | None = None) -> None:
        self._lib = _library()
        self._ctx: int | None = None
        self._pool: PoolKey | None = None  # where the context came from (and goes back to)
        self._cache = cache
        self._ns = ns_key
        self._batch = batch

    def _context(self) -> int:
        if not self._ctx:
            self._pool = _pool_key()
            self._ctx = _take_context(self._lib, self._pool)
        return self._ctx

    def close(self) -> None:
        if self._ctx:
            _give_back_context(self._lib, self._ctx, self._pool)
            self._ctx = None

    def _run(self, text: str) -> str:
        ctx = self._context()
        rc = self._lib.nft_run_cmd_from_buffer(ctx, text.encode())
        out = (self._lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
        err = (self._lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
        if rc != 0:
            if "No such file or directory" in err:
                raise NftNotFound(err.strip())
            raise FirewallError(f"nftables: {err.strip() or 'command failed'}")
        return out

    def _changed(self) -> None:
        if self._cache is not None:
            for key in [k for k in self._cache if k[0] == self._ns]:
                del self._cache[key]

    def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Apply a list of JSON commands as one atomic transaction."""
        if not commands:
            return []
        if any(set(c) != {"list"} for c in commands):
            if self._batch is not None:
                self._batch.json_groups.setdefault(self._ns, []).append(commands)
                return []
            self._changed()
        out = self._run(json.dumps({"nftables": commands}))
        return json.loads(out).get("nftables", []) if out.strip() else []

    def run_text(self, script: str) -> None:
        """Apply an nft script (the `nft -f` language) as one atomic transaction."""
        if self._batch is not None:
            self._batch.scripts.setdefault(self._ns, []).append(script)
            return
        self._changed()
        self._run(script)

    def table(self, family: str, name: str, fresh: bool = False) -> TableView | None:
        """The table with its chains and rules, or None if it does not exist.

        `fresh`: list it again even inside shared reads (before changing it by handle). Inside
        `batched_writes()` every read comes from one listing per table taken in the block."""
        key = (self._ns, family, name)
        if self._batch is not None and key in self._batch.views:
            return self._batch.views[key]
        if self._cache is not None and key in self._cache and not fresh:
            return self._cache[key]
        try:
            items = self.run([{"list": {"table": {"family": family, "name": name}}}])
        except NftNotFound:
            items = None
        view = None
        if items is not None:
            view = TableView(family, name)
            for item in items:
                if "chain" in item:
                    view.chains[item["chain"]["name"]] = item["chain"]
                elif "rule" in item:
                    view.rules.setdefault(item["rule"]["chain"], []).append(item["rule"])
        if self._cache is not None:
            self._cache[key] = view
        if self._batch is not None:
            self._batch.views[key] = view
        return view


SLOT = "nftables-views"  # this module's cache in a `kernel.readscope` scope (a ViewCache)


def shared_reads() -> contextlib.AbstractContextManager[None]:
    """Within the block each nftables table is listed once per netns for read-only use."""
    return readscope.scope(SLOT)


def _shared() -> ViewCache | None:
    return readscope.slot(SLOT)


_BATCH: contextvars.ContextVar[WriteBatch | None] = contextvars.ContextVar("reconciler_nft_batch", default=None)


@contextlib.contextmanager
def batched_writes() -> Iterator[WriteBatch]:
    """Queue every write made in the block and apply them at its end: one transaction per namespace
    (and language), in the order they were made, as if applied one after the other.

    For a batch of ADDs of distinct attachments that are verified afterwards (the reconciler's
    workers). Reads inside the block come from one listing per table taken in the block, so an
    operation does not see what earlier ones queued: each must touch only its own rules (plus shared
    idempotent scaffolding: tables, chains, flushed-and-refilled base chains). Deleting one rule
    handle twice is dropped. If the combined transaction fails, each operation's writes are applied
    on their own; what still fails is listed in `errors` (nothing is raised: the caller verifies).
    """
    with batch_scope(_BATCH, WriteBatch, flush) as batch:
        yield batch


def settle() -> None:
    """Inside `batched_writes()`: apply what is queued now and forget the block's listings, so the
    next reads see it. For undoing an operation of the block (a failed ADD's rollback): its
    queued rules must exist before its teardown can find and delete them. A queue of rule
    deletions only (a run of DELs) is left queued: the listing still names every rule a teardown
    may look for, and a handle deleted twice is dropped."""
    batch = _BATCH.get()
    if batch is not None and _adds_queued(batch):
        flush(batch)
        batch.views.clear()


def _adds_queued(batch: WriteBatch) -> bool:
    """True when the batch holds any write other than deleting a rule by handle."""
    return bool(any(script.strip() for scripts in batch.scripts.values() for script in scripts)
                or any(set(cmd) != {"delete"} or "rule" not in cmd["delete"]
                       for groups in batch.json_groups.values() for group in groups for cmd in group))


def _first_deletes_only(groups: list[list[T]], delete_key: Callable[[T], str | None]) -> list[list[T]]:
    """`groups` without the repeats of a delete (`delete_key` names one, None for any other item):
    deleting one rule handle twice would fail the whole transaction."""
    seen: set[str] = set()
    out = []
    for group in groups:
        kept = []
        for item in group:
            key = delete_key(item)
            if key is not None:
                if key in seen:
                    continue
                seen.add(key)
            kept.append(item)
        out.append(kept)
    return out


def flush(batch: WriteBatch) -> None:
    """Apply a batch's queued writes (see `batched_writes`)."""
    cache = _shared()  # shared reads of the namespaces written are dropped, as after any write
    for ns_key in sorted(set(batch.json_groups) | set(batch.scripts)):
        groups = _first_deletes_only(batch.json_groups.get(ns_key, []),
                                     lambda cmd: json.dumps(cmd, sort_keys=True) if "delete" in cmd else None)
        scripts = ["\n".join(lines) for lines in _first_deletes_only(
            [script.splitlines() for script in batch.scripts.get(ns_key, [])],
            lambda line: line if line.startswith("delete rule ") else None)]

        def body(groups: list[list[dict[str, Any]]] = groups, scripts: list[str] = scripts, ns_key: str = ns_key) -> None:
            nft = Nft(cache, ns_key)
            try:
                _apply_all(batch, [(lambda g=g: nft.run(g)) for g in groups if g],
                           lambda: nft.run([c for g in groups for c in g]))
                _apply_all(batch, [(lambda t=t: nft.run_text(t)) for t in scripts if t.strip()],
                           lambda: nft.run_text("\n".join(scripts)))
            finally:
                nft.close()

        try:
            run_in_netns(ns_key or None, body)
        except (OSError, FirewallError) as exc:
            batch.errors.append(f"nftables batch in {ns_key or 'this namespace'}: {exc}")
    batch.json_groups.clear()
    batch.scripts.clear()


def _apply_all(batch: WriteBatch, each: list[Callable[[], object]], combined: Callable[[], object]) -> None:
    """`combined()`, or when it fails every one of `each` on its own."""
    if not each:
        return
    try:
        combined()
        return
    except FirewallError as exc:
        if len(each) == 1:
            batch.errors.append(str(exc))
            return
    for one in each:
        try:
            one()
        except FirewallError as exc:
            batch.errors.append(str(exc))


def transact(netns: str | None, fn: Callable[[Nft], T]) -> T:
    """Run `fn(nft)` inside `netns` (reads shared within `shared_reads()`, writes queued within
    `batched_writes()`)."""
    cache = _shared()  # read in the caller's thread: context variables do not follow into threads
    batch = _BATCH.get()
    ns_key = netns_path(netns) if netns else ""

    def body() -> T:
        nft = Nft(cache, ns_key, batch)
        try:
            return fn(nft)
        finally:
            nft.close()

    return run_in_netns(netns, body)


def usable(netns: str | None = None) -> bool:
    """True if libnftables loads and can talk to the kernel here."""
    try:
        transact(netns, lambda nft: nft.run([{"list": {"tables": {}}}]))
    except (BackendUnavailable, FirewallError, OSError):
        return False
    return True


def rule_delete(rule: dict[str, Any]) -> dict[str, Any]:
    """The JSON command deleting a listed rule (by handle)."""
    return {"delete": {"rule": {"family": rule["family"], "table": rule["table"],
                                "chain": rule["chain"], "handle": rule["handle"]}}}
