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
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from reconciler.kernel.firewall.base import BackendUnavailable, FirewallError
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
_IDLE: dict[tuple[int, int, int], list[int]] = {}
_IDLE_LOCK = threading.Lock()
IDLE_PER_NAMESPACE = 4


def _here() -> tuple[int, int, int]:
    """(pid, namespace identity) of the calling thread: a forked child never takes its parent's."""
    st = os.stat("/proc/thread-self/ns/net")
    return os.getpid(), st.st_dev, st.st_ino


def _own_namespace(key: tuple[int, int, int]) -> bool:
    st = os.stat("/proc/self/ns/net")
    return key[1:] == (st.st_dev, st.st_ino)


def _take_context(lib: ctypes.CDLL) -> int:
    """An idle context of this thread's namespace, or a new one."""
    with _IDLE_LOCK:
        idle = _IDLE.get(_here())
        if idle:
            return idle.pop()
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise BackendUnavailable("nft_ctx_new failed")
    lib.nft_ctx_output_set_flags(ctx, OUTPUT_JSON | OUTPUT_HANDLE)
    lib.nft_ctx_buffer_output(ctx)
    lib.nft_ctx_buffer_error(ctx)
    return int(ctx)


def _give_back_context(lib: ctypes.CDLL, ctx: int) -> None:
    """Keep `ctx` for the next transaction (a few, in this process's own namespace); else free it."""
    key = _here()
    if _own_namespace(key):
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


class Nft:
    """A libnftables context, made on first use (in the netns it should act on).

    With `cache` (a pass's shared reads) `table()` answers from one listing per
    (netns, family, table); any change made through this object drops that netns's copies.
    """

    def __init__(self, cache: ViewCache | None = None, ns_key: str = "") -> None:
        self._lib = _library()
        self._ctx: int | None = None
        self._cache = cache
        self._ns = ns_key

    def _context(self) -> int:
        if not self._ctx:
            self._ctx = _take_context(self._lib)
        return self._ctx

    def close(self) -> None:
        if self._ctx:
            _give_back_context(self._lib, self._ctx)
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
            self._changed()
        out = self._run(json.dumps({"nftables": commands}))
        return json.loads(out).get("nftables", []) if out.strip() else []

    def run_text(self, script: str) -> None:
        """Apply an nft script (the `nft -f` language) as one atomic transaction."""
        self._changed()
        self._run(script)

    def table(self, family: str, name: str, fresh: bool = False) -> TableView | None:
        """The table with its chains and rules, or None if it does not exist.

        `fresh`: list it again even inside shared reads (before changing it by handle)."""
        key = (self._ns, family, name)
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
        return view


_SHARED: contextvars.ContextVar[ViewCache | None] = contextvars.ContextVar("reconciler_nft_views", default=None)


@contextlib.contextmanager
def shared_reads() -> Iterator[None]:
    """Within the block each nftables table is listed once per netns for read-only use."""
    if _shared() is not None:
        yield
        return
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def _shared() -> ViewCache | None:
    cache = _SHARED.get()
    if cache is not None:
        return cache
    snap = sys.modules.get("reconciler.kernel.snapshot")  # the pass-wide block of the netlink snapshot
    active = getattr(snap, "_SHARED", None) if snap is not None else None
    if active is not None and active.get() is not None:
        return active.get().setdefault(("nft-views",), {})  # type: ignore[no-any-return]
    return None


def transact(netns: str | None, fn: Callable[[Nft], T]) -> T:
    """Run `fn(nft)` inside `netns` (reads shared within `shared_reads()`)."""
    cache = _shared()  # read in the caller's thread: context variables do not follow into threads
    ns_key = netns_path(netns) if netns else ""

    def body() -> T:
        nft = Nft(cache, ns_key)
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
