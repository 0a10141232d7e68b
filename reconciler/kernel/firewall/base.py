"""The firewall backend interface shared by ipMasq, portmap and the firewall plugin.

Two implementations exist: `iptables` (legacy x_tables through python-iptables)
and `nftables` (libnftables' JSON API). Each feature module (masquerade,
portmap, filter) keeps one class per backend deriving from `FeatureBackend`;
`select.choose` picks which one an attachment uses, and every rule of one
attachment goes to that one backend.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import TypeVar

B = TypeVar("B")
S = TypeVar("S")
T = TypeVar("T")

IPTABLES = "iptables"
NFTABLES = "nftables"
BACKENDS = (IPTABLES, NFTABLES)


def alternative() -> str | None:
    """The backend the host's `iptables` command points at (its Debian alternative), if it can be told."""
    import os

    for path in ("/usr/sbin/iptables", "/sbin/iptables", "/etc/alternatives/iptables"):
        if os.path.exists(path):
            real = os.path.realpath(path)
            if "legacy" in real:
                return IPTABLES
            if "nft" in real:
                return NFTABLES
    return None


def each_family(transact: Callable[..., T], netns: str | None, table: str, fn: Callable[[S], T]) -> list[T]:
    """`transact(netns, family, table, fn, existing_only=True)` for IPv4 then IPv6, skipping a family
    whose table is not there (BackendUnavailable): teardown, GC and lookups never make a table."""
    out: list[T] = []
    for family in (4, 6):
        try:
            out.append(transact(netns, family, table, fn, existing_only=True))
        except BackendUnavailable:
            continue
    return out


class FirewallError(RuntimeError):
    """A firewall operation failed (the kernel or the library refused it)."""


class BackendUnavailable(FirewallError):
    """The requested backend cannot be used on this host (module or library missing)."""


class RuleDrift(LookupError):
    """CHECK found a rule or chain of ours missing or different; the message names it."""


def sha512_hex(text: str) -> str:
    return hashlib.sha512(text.encode()).hexdigest()


def hash_name(prefix: str, text: str, length: int) -> str:
    """The reference's MustFormatHashWithPrefix: (prefix + sha512 hex)[:length]."""
    return (prefix + sha512_hex(text))[:length]


class FeatureBackend(ABC):
    """One feature's rules in one backend; all calls take the netns to act in (None: ours)."""

    name: str = ""

    @abstractmethod
    def has_attachment(self, network: str, container_id: str, netns: str | None) -> bool:
        """True if this backend holds any rule of this attachment."""


@contextlib.contextmanager
def batch_scope(var: contextvars.ContextVar[B | None], make: Callable[[], B],
                flush: Callable[[B], None]) -> Iterator[B]:
    """Open a write batch in `var` (or join the one already open) and flush it when the outermost
    block ends: the frame of both backends' `batched_writes`."""
    current = var.get()
    if current is not None:
        yield current
        return
    batch = make()
    token = var.set(batch)
    try:
        yield batch
    finally:
        var.reset(token)
        flush(batch)
