"""Network namespaces: netlink handles bound to a namespace, and running code inside one.

Every kernel function takes ``netns: str | None``: a path such as
``/run/netns/x`` (a bare name is looked up under /run/netns), or None for the
namespace the calling thread is in (the process's, outside `entered`). Netlink sockets are opened inside the target
namespace by the calling thread (`entered`: a per-thread setns, switched
straight back), and so is procfs work such as sysctls. Work done through
other threads (pyroute2's ioctl helpers) runs in a forked child (`run_in`).

Inside ``with session():`` handles are cached per namespace (found by the
namespace's identity, not its name: `session_key`) and closed at the end, so one
plugin verb pays for opening each namespace once.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import errno
import os
import pickle
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000  # a mount namespace
T = TypeVar("T")


class KernelError(OSError):
    """A kernel operation failed; `errno` carries the kernel's error number."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(code, msg)
        self.code = code
        self.msg = msg

    def __str__(self) -> str:
        return self.msg


class NetnsNotFound(KernelError):
    """The namespace path does not exist or is not a network namespace."""

    def __init__(self, path: str, why: str = "no such network namespace") -> None:
        super().__init__(errno.ENOENT, f"{path}: {why}")
        self.path = path


class LinkNotFound(KernelError):
    def __init__(self, name: str | int, netns: str | None) -> None:
        super().__init__(errno.ENODEV, f"link {name!r} not found in {netns or 'current netns'}")
        self.name = name


def resolve(netns: str | None) -> str | None:
    """A namespace argument as an absolute path (None stays None)."""
    if netns in (None, ""):
        return None
    assert netns is not None
    return netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)


def exists(netns: str | None) -> bool:
    """True when `netns` names an existing network namespace (None: always)."""
    path = resolve(netns)
    if path is None:
        return True
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        return _is_netns_fd(fd)
    finally:
        os.close(fd)


def _is_netns_fd(fd: int) -> bool:
    # NS_GET_NSTYPE ioctl = _IO(0xb7, 0x3) (Linux >= 4.11): anything else is not a netns.
    import fcntl

    try:
        kind = fcntl.ioctl(fd, 0xB703)
    except OSError:
        return False
    return kind == CLONE_NEWNET


def check(netns: str | None) -> str | None:
    """Resolve and verify `netns`, raising NetnsNotFound."""
    path = resolve(netns)
    if path is not None and not exists(path):
        raise NetnsNotFound(path)
    return path


def same_as_current(netns: str | None) -> bool:
    """True when `netns` is the namespace this process runs in."""
    path = resolve(netns)
    if path is None:
        return True
    try:
        a, b = os.stat(path), os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def identity(netns: str | None) -> tuple[int, int] | None:
    """(dev, inode) of a namespace (a name or a path; any path's file, e.g. /proc/PID/root, alike);
    None if it does not exist."""
    path = resolve(netns) or "/proc/self/ns/net"
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def same(a: str | None, b: str | None) -> bool:
    """True when both arguments name the same namespace."""
    if resolve(a) == resolve(b):
        return True
    ia, ib = identity(a), identity(b)
    return ia is not None and ia == ib


def _open_ipr(path: str | None) -> Any:
    """An IPRoute whose netlink socket lives in `path`.

    The socket is created by this thread inside the namespace (`entered`): a
    socket stays bound to the namespace it was created in. That costs ~1 ms,
    where pyroute2's `IPRoute(netns=...)` forks a helper to do the same (~70 ms).
    """
    from pyroute2 import IPRoute

    with entered(path):
        return IPRoute()


_SESSION: contextvars.ContextVar[dict[Any, Any] | None] = contextvars.ContextVar(
    "reconciler_kernel_session", default=None
)


def thread_identity() -> tuple[int, int] | None:
    """(dev, inode) of the calling thread's namespace: inside `entered`, the one entered (where
    `identity(None)` is the process's)."""
    return identity("/proc/thread-self/ns/net")


def session_key(kind: str, path: str | None) -> tuple[str, tuple[int, int]] | None:
    """The session cache's key for a `kind` of handle to `path`'s namespace: the namespace itself
    (dev, inode), not its name, so a name re-created for another namespace never finds the old
    one's handle (a cached handle keeps its namespace, and so its inode number, alive). `path`
    None is the calling thread's namespace. None when the namespace is missing: nothing is cached
    for it."""
    ident = identity(path) if path else thread_identity()
    return (kind, ident) if ident is not None else None


@contextlib.contextmanager
def cached(kind: str, netns: str | None, opener: Callable[[str | None], Any]) -> Iterator[Any]:
    """`opener(path)`'s handle to `netns`: inside a `session`, the one cached for the namespace
    (`session_key`), opened on first use and closed when the session ends; outside, a fresh one,
    closed after the block."""
    path = resolve(netns)
    cache = _SESSION.get()
    key = session_key(kind, path) if cache is not None else None
    if key is not None:
        assert cache is not None
        handle = cache.get(key)
        if handle is None:
            handle = cache[key] = opener(path)
        yield handle
        return
    handle = opener(path)
    try:
        yield handle
    finally:
        handle.close()


@contextlib.contextmanager
def session() -> Iterator[None]:
    """Cache one netlink handle per namespace until the block ends."""
    if _SESSION.get() is not None:
        yield
        return
    cache: dict[Any, Any] = {}
    token = _SESSION.set(cache)
    try:
        yield
    finally:
        _SESSION.reset(token)
        for ipr in cache.values():
            with contextlib.suppress(Exception):
                ipr.close()


def ipr(netns: str | None) -> contextlib.AbstractContextManager[Any]:
    """A pyroute2 IPRoute bound to `netns` (cached inside a `session`)."""
    return cached("ipr", netns, _open_ipr)


def forget(netns: str | None) -> None:
    """Drop the cached handles of `netns`, which is about to be deleted (call it while the name still
    names the namespace: the handles are found by its identity): pyroute2's and kernel.rtnl's."""
    cache = _SESSION.get()
    if cache is None:
        return
    path = resolve(netns)
    for kind in ("ipr", "rtnl"):
        key = session_key(kind, path)
        handle = cache.pop(key, None) if key is not None else None
        if handle is not None:
            with contextlib.suppress(Exception):
                handle.close()


_LIBC: Any = None
MNT_DETACH = 2


def libc() -> Any:
    """The C library (errno kept), loaded once: the one handle the kernel layer calls it through."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


@contextlib.contextmanager
def fresh_session() -> Iterator[None]:
    """A new `session`, ignoring any this process inherited (a forked worker must not share its
    parent's sockets)."""
    token = _SESSION.set(None)
    try:
        with session():
            yield
    finally:
        _SESSION.reset(token)


def setns(fd: int, kind: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace `fd` refers to (OSError if the kernel refuses)."""
    if libc().setns(fd, kind) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def join_process(pid: int, *, mounts: bool = False) -> None:
    """Move this process into `pid`'s network namespace and, when `mounts`, its mount namespace (which
    also moves the root and working directory to that namespace's root). For a forked, single-threaded
    child only: nothing is restored. OSError when either cannot be entered."""
    fds = [os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
           for name in (("mnt", "net") if mounts else ("net",))]
    try:
        if mounts:
            setns(fds[0], CLONE_NEWNS)
        setns(fds[-1], CLONE_NEWNET)
    finally:
        for fd in fds:
            os.close(fd)


_SWITCHED = threading.local()  # .depth: how many `entered` blocks have moved this thread


def switched() -> bool:
    """Is this thread inside an `entered` block that moved it to another namespace?"""
    return getattr(_SWITCHED, "depth", 0) > 0


@contextlib.contextmanager
def entered(netns: str | None) -> Iterator[None]:
    """Run the block with this thread inside `netns`, then switch it back.

    `setns` is per-thread, so the rest of the process stays where it was. Good
    for work done by this thread alone: procfs reads and writes (/proc/sys/net
    shows the namespace of the thread that opens it) and creating sockets,
    which stay bound to the namespace they were created in. Not for code that
    hands work to other threads (use `run_in`).
    """
    path = resolve(netns)
    if path is None:
        yield
        return
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetnsNotFound(path, "no such network namespace" if isinstance(exc, FileNotFoundError) else str(exc)) \
            from exc
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            setns(target)
        except OSError as exc:
            raise NetnsNotFound(path, f"not a network namespace ({exc})") from exc
        _SWITCHED.depth = getattr(_SWITCHED, "depth", 0) + 1
        try:
            yield
        finally:
            _SWITCHED.depth -= 1
            setns(own)  # if this failed the thread would stay in the wrong namespace: let it raise
    finally:
        os.close(own)
        os.close(target)


def run_in(netns: str | None, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args)` inside `netns` in a forked child; return its (picklable) result or raise its error."""
    path = resolve(netns)
    if path is None or same_as_current(path):
        return fn(*args)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise NetnsNotFound(path) from exc
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: enter the namespace, run, report, exit without cleanup handlers
        os.close(rd)
        try:
            setns(fd)
            payload = pickle.dumps((True, fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
            try:
                payload = pickle.dumps((False, exc))
            except Exception:  # noqa: BLE001
                payload = pickle.dumps((False, OSError(errno.EIO, repr(exc))))
        os.write(wr, struct.pack("!I", len(payload)))
        view = memoryview(payload)
        while view:
            view = view[os.write(wr, view):]
        os._exit(0)
    os.close(wr)
    os.close(fd)
    try:
        data = b""
        while chunk := os.read(rd, 65536):
            data += chunk
    finally:
        os.close(rd)
        os.waitpid(pid, 0)
    if len(data) < 4:
        raise KernelError(errno.EIO, f"child in {path} died without an answer")
    ok, value = pickle.loads(data[4:])
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


def remove(netns: str) -> None:
    """Delete a named namespace (lazy unmount + unlink, as `ip netns delete`); gone already is fine."""
    path = resolve(netns)
    assert path is not None
    forget(path)
    if libc().umount2(path.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # not a mount point / no such file: nothing mounted
            raise OSError(err, f"umount {path}: {os.strerror(err)}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def list_named() -> list[str]:
    """Names under /run/netns."""
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []
