"""Snapshots of many namespaces at once, for a reconcile pass.

`prime()` reads each namespace once (`kernel.snapshot.read`: links, addresses and
routes over one raw rtnetlink socket, see kernel/rtnl.py) into the shared cache
of a `kernel.snapshot.shared()` block, so every CHECK of the block reads from it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from reconciler.kernel import netns as nsmod
from reconciler.kernel import readscope
from reconciler.kernel import snapshot as snapmod
from reconciler.kernel.snapshot import Snapshot, read

__all__ = ["prime", "read", "shared"]


def prime(namespaces: Iterable[str | None]) -> dict[str | None, Snapshot | None]:
    """Read each namespace once into the current `snapshot.shared()` block (a no-op outside one).

    Returns {namespace: snapshot}, None for a namespace that is gone. Already cached ones are reused.
    """
    cache = readscope.slot(snapmod.SLOT)
    out: dict[str | None, Snapshot | None] = {}
    for netns in dict.fromkeys(namespaces):
        key = nsmod.identity(netns)
        if key is None:
            out[netns] = None
            continue
        snap = cache.get(key) if cache is not None else None
        if snap is None:
            try:
                snap = read(netns)
            except OSError:
                out[netns] = None
                continue
            if cache is not None:
                cache[key] = snap
        out[netns] = snap
    return out


@contextlib.contextmanager
def shared(namespaces: Iterable[str | None] = ()) -> Iterator[dict[str | None, Snapshot | None]]:
    """`kernel.snapshot.shared()` with `namespaces` read up front by this module."""
    with snapmod.shared():
        yield prime(namespaces)
