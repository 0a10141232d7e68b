"""Sysctls under /proc/sys/net, read and written inside the right namespace.

/proc/sys/net shows the namespace of the thread that opens it, so for
another namespace this thread enters it for the batch (`netns.entered`, a
per-thread setns: ~0.1 ms, where a forked child cost ~3 ms).

Opening a path under /proc/sys/net costs time in proportion to the number of
namespaces on the host: each has its own `ipv4` and `ipv6` under the shared
`net`, all in one dentry hash chain, and the kernel compares every one with
the caller's namespace (~0.2 ms per open with 500 namespaces, against ~0.03
with 100). Keys of the process's own namespace, where the host-side keys of
the engine and the daemon live, are therefore opened relative to descriptors
of its `net/ipv4` and `net/ipv6`, held for the process's lifetime (`_home`).
The process's own namespace is the main thread's outside `netns.entered`.
"""

from __future__ import annotations

import contextlib
import os
import threading

from reconciler.kernel import netns as nsmod

ROOT = "/proc/sys"


def _rel(key: str) -> str:
    """`net.ipv4.ip_forward` or `net/ipv4/ip_forward` -> net/ipv4/ip_forward (net.* only)."""
    rel = key.strip("/") if "/" in key else key.replace(".", "/")
    if not rel.startswith("net/"):
        raise ValueError(f"sysctl {key!r}: only net.* keys are namespaced")
    if ".." in rel.split("/"):
        raise ValueError(f"sysctl {key!r}: bad key")
    return rel


class _Home:
    """This process's own namespace (the main thread's, outside any `netns.entered`), pinned by a
    descriptor so that its inode number stays its own, and its /proc/sys/net/ipv4 and ipv6."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(self.ns_fd)
        self.identity = (st.st_dev, st.st_ino)
        self.dirs: dict[str, int] = {}
        self.opened = False

    def here(self) -> bool:
        """Is the calling thread in this namespace?"""
        st = os.stat("/proc/thread-self/ns/net")
        return (st.st_dev, st.st_ino) == self.identity

    def open_dirs(self) -> None:
        """Open net/ipv4 and net/ipv6 once (the caller is in this namespace); one may be absent (no IPv6)."""
        self.opened = True
        for family in ("ipv4", "ipv6"):
            with contextlib.suppress(OSError):
                self.dirs[family] = os.open(f"{ROOT}/net/{family}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        for fd in [self.ns_fd, *self.dirs.values()]:
            os.close(fd)


_HOME: _Home | None = None


def _home() -> dict[str, int]:
    """Descriptors of net/ipv4 and net/ipv6 when the calling thread is in the process's own namespace, else {}."""
    global _HOME
    if nsmod.switched():
        return {}  # visiting another namespace
    try:
        if _HOME is not None and _HOME.pid != os.getpid():
            _HOME.close()  # inherited across a fork: the child pins and opens its own
            _HOME = None
        if _HOME is None:
            if threading.current_thread() is not threading.main_thread():
                return {}  # another thread may have been moved by other means: only the main one says
            _HOME = _Home()
        if not _HOME.here():
            return {}
        if not _HOME.opened:
            _HOME.open_dirs()
        return _HOME.dirs
    except OSError:
        return {}


def _open(key: str, flags: int, home: dict[str, int]) -> int:
    """Open `key` for `flags`: relative to `home`'s descriptors where it lies under one of them."""
    rel = _rel(key)
    family, _, rest = rel[4:].partition("/")
    dir_fd = home.get(family) if rest else None
    if dir_fd is not None:
        return os.open(rest, flags, dir_fd=dir_fd)
    return os.open(os.path.join(ROOT, rel), flags)


def key_for(*parts: str) -> str:
    """Build a slash-form key that tolerates dots in interface names: key_for('net','ipv6','conf','eth0.5','accept_dad')."""
    return "/".join(parts)


def _read_fd(fd: int) -> str:
    return os.read(fd, 4096).decode().strip()


def _read_many(keys: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    home = _home()
    for key in keys:
        try:
            fd = _open(key, os.O_RDONLY | os.O_CLOEXEC, home)
        except FileNotFoundError:
            out[key] = None
            continue
        try:
            out[key] = _read_fd(fd)
        finally:
            os.close(fd)
    return out


def _write_many(values: list[tuple[str, str]], only_if_different: bool,
                missing_ok: bool = False) -> dict[str, str | None]:
    """Each key read and, when it differs, written through one descriptor (plain fds: Python's
    file objects cost ~10 syscalls per open)."""
    before: dict[str, str | None] = {}
    home = _home()
    for key, value in values:
        try:
            fd = _open(key, os.O_RDWR | os.O_CLOEXEC, home)
        except FileNotFoundError:
            before[key] = None
            if missing_ok:
                continue
            raise
        except PermissionError as exc:  # read-only here: fine as long as it already holds the value
            fd, refused = _open(key, os.O_RDONLY | os.O_CLOEXEC, home), exc
        else:
            refused = None
        try:
            current = before[key] = _read_fd(fd)
            if not (only_if_different and current == value):
                if refused is not None:
                    raise refused
                os.pwrite(fd, value.encode(), 0)  # at offset 0: sysctls ignore writes past it
        finally:
            os.close(fd)
    return before


def read(key: str, netns: str | None = None) -> str | None:
    """The value of one sysctl (None if the key does not exist)."""
    return read_many([key], netns)[key]


def read_many(keys: list[str], netns: str | None = None) -> dict[str, str | None]:
    with nsmod.entered(netns):
        return _read_many(list(keys))


def write(key: str, value: str | int, netns: str | None = None) -> str | None:
    """Set one sysctl (skipped when already equal); returns the previous value."""
    return write_many({key: value}, netns)[key]


def write_many(values: dict[str, str | int], netns: str | None = None,
               only_if_different: bool = True, missing_ok: bool = False) -> dict[str, str | None]:
    """Set several sysctls in one namespace visit, in order; returns the previous values.

    `missing_ok`: skip keys that do not exist (IPv6 disabled, ...) instead of raising.
    """
    items = [(k, str(v)) for k, v in values.items()]
    with nsmod.entered(netns):
        return _write_many(items, only_if_different, missing_ok)


def enable_forwarding(ipv4: bool, ipv6: bool, netns: str | None = None) -> None:
    """ip_forward / conf.all.forwarding = 1 where not already (never reverted, as the reference)."""
    values: dict[str, str | int] = {}
    if ipv4:
        values["net/ipv4/ip_forward"] = 1
    if ipv6:
        values["net/ipv6/conf/all/forwarding"] = 1
    if values:
        write_many(values, netns)
