"""Which names in a directory changed since we last asked: inotify, one instance per process.

A `Watch` is armed on an open directory; `changes()` then returns every name
created, deleted, moved, or closed after writing in it since the previous call
(or since arming), or None when that cannot be known: the kernel's event queue
overflowed, the directory itself went away, or the process forked (a child
must not read the events of its parent's instance). Events are queued by the
kernel before the call that caused them returns, so a change that completed
before `changes()` is always in its answer. The caller who gets None reads the
directory in full and arms a new watch.

One inotify instance per process holds every watch (instances are limited per
user, 128 by default, shared with every other root daemon; watches far less),
and only long-lived processes arm one (the engine, the warm daemon's workers).
`ctypes` (through `netns.libc`) is loaded on first use: a process that never
arms a watch pays nothing. When inotify is unavailable `arm` returns None and callers list.
"""

from __future__ import annotations

import os
import struct
import threading
import weakref

IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
MASK = (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF
        | IN_ONLYDIR)
_LOCK = threading.Lock()  # one reader of the queue at a time
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then `len` bytes of NUL-padded name


class _Instance:
    """This process's inotify fd and the watches listening on each watch descriptor."""

    def __init__(self) -> None:
        import ctypes

        from reconciler.kernel.netns import libc

        self.libc = libc()
        fd = self.libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.fd = fd
        self.pid = os.getpid()
        self.listeners: dict[int, weakref.WeakSet[Watch]] = {}  # wd -> watches on that directory

    def add(self, dir_fd: int, watch: Watch) -> None:
        import ctypes

        wd = self.libc.inotify_add_watch(self.fd, f"/proc/self/fd/{dir_fd}".encode(), MASK)
        if wd < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        self.listeners.setdefault(wd, weakref.WeakSet()).add(watch)  # the same directory twice: same wd

    def drain(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            offset = 0
            while offset + EVENT.size <= len(data):
                wd, mask, _cookie, length = EVENT.unpack_from(data, offset)
                name = os.fsdecode(data[offset + EVENT.size:offset + EVENT.size + length].rstrip(b"\0"))
                offset += EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    for listeners in self.listeners.values():
                        for watch in listeners:
                            watch.names = None
                    continue
                for watch in self.listeners.get(wd, ()):
                    if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                        watch.names = None
                    elif watch.names is not None and name:
                        watch.names.add(name)
                if mask & IN_IGNORED:
                    self.listeners.pop(wd, None)  # the kernel dropped the watch; the number may be reused


_INSTANCE: _Instance | None = None


def _instance() -> _Instance:
    global _INSTANCE
    if _INSTANCE is None or _INSTANCE.pid != os.getpid():
        _INSTANCE = _Instance()  # after a fork the inherited fd is the parent's queue: never read it
    return _INSTANCE


class Watch:
    """Changes to one directory from the moment `arm` returns."""

    def __init__(self, dev_ino: tuple[int, int]) -> None:
        self.names: set[str] | None = set()
        self.dev_ino = dev_ino  # (st_dev, st_ino) of the directory watched
        self._instance: _Instance | None = None

    @classmethod
    def arm(cls, dir_fd: int) -> Watch | None:
        """A watch on the open directory `dir_fd`; None if inotify is unavailable (limits, seccomp)."""
        try:
            st = os.fstat(dir_fd)
            watch = cls((st.st_dev, st.st_ino))
            with _LOCK:
                instance = _instance()
                instance.add(dir_fd, watch)
        except (OSError, AttributeError):
            return None
        watch._instance = instance
        return watch

    def changes(self) -> set[str] | None:
        """Names changed since the previous call (or `arm`); None if unknown: read the directory."""
        instance = self._instance
        if instance is None or instance is not _INSTANCE or instance.pid != os.getpid():
            return None
        with _LOCK:
            try:
                instance.drain()
            except OSError:
                return None
            names, self.names = self.names, (set() if self.names is not None else None)
        return names
