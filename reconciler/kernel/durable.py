"""fsync, the one way to defer it (to a single syncfs of the whole filesystem), and the atomic
file replacement the result cache and the reconciler's own files share (`replace_file`).

A caller that first records durably what it is about to do, and syncs the filesystem before it
forgets that record (the reconciler's pass: one fsync'd journal batch, then `syncfs`), may run a
block of work with the fsyncs of files on that filesystem deferred (`deferred`). If the machine
goes down before the sync, the record says what to undo; a process crash loses nothing either
way (the page cache survives it). Everything else fsyncs as usual.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import tempfile
from collections.abc import Iterator

_DEFERRED: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar(
    "reconciler_deferred_sync_devices", default=frozenset())


@contextlib.contextmanager
def deferred(path: str) -> Iterator[None]:
    """Inside the block, `fsync` of files on `path`'s filesystem returns at once; the caller runs
    `syncfs(path)` before it relies on them."""
    token = _DEFERRED.set(_DEFERRED.get() | {os.stat(path).st_dev})
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def fsync(fd: int) -> None:
    """os.fsync(fd), unless its filesystem's sync is deferred (see `deferred`)."""
    devices = _DEFERRED.get()
    if devices and os.fstat(fd).st_dev in devices:
        return
    os.fsync(fd)


def replace_file(path: str | os.PathLike[str], data: bytes, *, deferrable: bool = False) -> None:
    """Atomically replace `path` with `data`: an owner-only temporary beside it, fsync'd (unless
    `deferrable` and inside `deferred`), renamed over it. A crash leaves the old file or the new one."""
    directory = os.path.dirname(os.fspath(path)) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            (fsync if deferrable else os.fsync)(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def syncfs(path: str) -> None:
    """Flush every write to `path`'s filesystem at once (sync(2) where syncfs(2) fails)."""
    from reconciler.kernel.netns import libc  # not at import: it loads ctypes, which plugins rarely need

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if libc().syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)
