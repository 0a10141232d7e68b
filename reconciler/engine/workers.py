"""Run one function over several slices of work at once: this process takes the first, forked workers the rest.

A pass's ADDs and CHECKs are CPU-bound Python; threads would share one interpreter lock, forked
processes use every CPU. A worker inherits everything the parent read before the fork (the
pass's snapshots, parsed specs), opens its own netlink handles (`namespaces.fresh_session`),
sends its (picklable) result back through a pipe and leaves with `os._exit`, running none of
the parent's cleanup. Fork only from a single-threaded process: a lock held by another thread
at the fork stays held forever in the child.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from typing import TypeVar

from reconciler.kernel import namespaces

T = TypeVar("T")
R = TypeVar("R")


def default_count() -> int:
    """How many processes a pass uses: RECONCILER_WORKERS, else one per CPU up to 4."""
    return int(os.environ.get("RECONCILER_WORKERS") or min(os.cpu_count() or 1, 4))


class WorkerFailed(str):
    """Why a worker's slice has no result (it raised, died, or answered garbage)."""

    __slots__ = ()


def fork_map(parts: Sequence[T], fn: Callable[[T], R]) -> list[R | WorkerFailed]:
    """[fn(part) for part in parts], parts[1:] each in a forked worker; an exception here propagates."""
    children: list[tuple[int, int]] = []
    try:
        for part in parts[1:]:
            rd, wr = os.pipe()
            pid = os.fork()
            if pid == 0:  # worker
                os.close(rd)
                try:
                    with namespaces.fresh_session():
                        payload = pickle.dumps((True, fn(part)))
                except BaseException as err:  # noqa: BLE001 - everything goes back to the parent
                    payload = pickle.dumps((False, f"{type(err).__name__}: {err}"))
                view = memoryview(payload)
                while view:
                    view = view[os.write(wr, view):]
                os._exit(0)
            os.close(wr)
            children.append((pid, rd))
        out: list[R | WorkerFailed] = [fn(parts[0])] if parts else []
    finally:
        answers = [_collect(pid, rd) for pid, rd in children]
    return out + answers


def _collect(pid: int, rd: int) -> R | WorkerFailed:  # type: ignore[type-var]
    data = bytearray()
    try:
        while chunk := os.read(rd, 1 << 16):
            data += chunk
    finally:
        os.close(rd)
        _, status = os.waitpid(pid, 0)
    if not data:
        return WorkerFailed(f"worker {pid} died without an answer (wait status {status})")
    try:
        ok, value = pickle.loads(bytes(data))
    except Exception as err:  # noqa: BLE001
        return WorkerFailed(f"unreadable answer from worker {pid}: {err}")
    return value if ok else WorkerFailed(value)
