"""Run one function over several slices of work at once: this process takes the first, forked workers the rest.

`fork_queue` hands the items out one at a time instead, from a queue the processes share (a pipe
of item numbers), so a process that runs slower (a forked worker's first copy-on-write faults,
an unlucky share of the kernel's locks) takes fewer and none waits long for the others.

A pass's ADDs and CHECKs are CPU-bound Python; threads would share one interpreter lock, forked
processes use every CPU. A worker inherits everything the parent read before the fork (the
pass's snapshots, parsed specs), opens its own netlink handles (`namespaces.fresh_session`),
sends its (picklable) result back through a pipe and leaves with `os._exit`, running none of
the parent's cleanup. Fork only from a single-threaded process: a lock held by another thread
at the fork stays held forever in the child.
"""

from __future__ import annotations

import fcntl
import gc
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
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
        gc.freeze()  # the workers' collections skip what exists now: no copy-on-write of it for that
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
        finally:
            gc.unfreeze()  # here, in the parent
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


_TOKEN = 4  # bytes per queued item number


def fork_queue(items: Sequence[T], count: int, fn: Callable[[Iterator[T], int], list[R]]) -> list[R | WorkerFailed]:
    """One result per item, in the items' order: `fn(mine, index)` runs in `count` processes (index 0
    is this one), each over the items it takes from a shared queue, and returns one result per item
    it took.

    Each take is one read(2) of a pipe filled before the fork: reads of whole item numbers from a
    pipe holding a multiple of their size never split one. With more items than a pipe may hold,
    process `index` takes every `count`-th item from `index` on instead. The items of a worker that
    failed get its `WorkerFailed`; an exception here propagates, as in `fork_map`.
    """
    queue = _filled_queue(len(items))

    def run(index: int) -> list[tuple[int, R]]:
        taken: list[int] = []

        def take() -> Iterator[T]:
            numbers = _drain(queue) if queue is not None else iter(range(index, len(items), count))
            for number in numbers:
                taken.append(number)
                yield items[number]

        results = fn(take(), index)
        return list(zip(taken, results, strict=True))

    try:
        answers = fork_map(range(count), run)
    finally:
        if queue is not None:
            os.close(queue)
    out: list[R | WorkerFailed | None] = [None] * len(items)
    failed = WorkerFailed("not taken by any worker")
    for answer in answers:
        if isinstance(answer, WorkerFailed):
            failed = answer
            continue
        for number, result in answer:
            out[number] = result
    return [failed if r is None else r for r in out]


def _filled_queue(count: int) -> int | None:
    """The read end of a pipe holding the numbers 0..count-1, its write end closed (so every reader
    gets EOF at the end); None when the pipe cannot be made to hold them all."""
    rd, wr = os.pipe()
    try:
        size = count * _TOKEN
        if size > fcntl.fcntl(wr, fcntl.F_GETPIPE_SZ):
            fcntl.fcntl(wr, fcntl.F_SETPIPE_SZ, size)
        data = memoryview(b"".join(i.to_bytes(_TOKEN, "little") for i in range(count)))
        while data:  # fits the pipe: never blocks
            data = data[os.write(wr, data):]
    except OSError:
        os.close(rd)
        return None
    finally:
        os.close(wr)
    return rd


def _drain(queue: int) -> Iterator[int]:
    while raw := os.read(queue, _TOKEN):
        yield int.from_bytes(raw, "little")
