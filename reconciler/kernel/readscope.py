"""Read scopes: blocks of read-only work in which each kernel read is made once and shared.

A scope holds one cache ("slot") per kind of read, a plain dict its layer keys as it likes:
namespace snapshots (kernel.snapshot), iptables tables (firewall.iptables), nftables listings
(firewall.nftables). `scope()` shares every kind: a reconcile pass's read-only stretches
(observe, verify) open it through `snapshot.shared()`. `scope(kind)` shares one kind only (a
firewall backend's `shared_reads()`) and keeps the slots of any scope around it. A layer that
writes drops the entries its write made stale.

Standard library only: the firewall backends import it on a cold plugin's path.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any


class _Scope:
    __slots__ = ("every", "slots")

    def __init__(self, slots: dict[str, dict[Any, Any]], every: bool) -> None:
        self.slots = slots
        self.every = every  # a slot for any kind asked for, made on first use


_CURRENT: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("reconciler_read_scope", default=None)


def slot(kind: str) -> dict[Any, Any] | None:
    """The current scope's cache for reads of `kind`; None where they are not shared.

    Context variables do not follow into threads: call it in the thread that opened the scope."""
    current = _CURRENT.get()
    if current is None:
        return None
    cache = current.slots.get(kind)
    if cache is None and current.every:
        cache = current.slots[kind] = {}
    return cache


@contextlib.contextmanager
def scope(kind: str | None = None) -> Iterator[None]:
    """Share reads of `kind` (None: of every kind) within the block; a no-op where they already are."""
    outer = _CURRENT.get()
    if outer is not None and (outer.every or kind in outer.slots):
        yield
        return
    inner = _Scope(dict(outer.slots) if outer is not None else {}, every=kind is None)
    if kind is not None:
        inner.slots[kind] = {}
    token = _CURRENT.set(inner)
    try:
        yield
    finally:
        _CURRENT.reset(token)
