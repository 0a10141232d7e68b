"""Named network namespaces for the reconciler, and a cheap per-namespace snapshot.

Knows nothing of CNI: it takes names and paths and returns plain dicts.
Named namespaces live at /run/netns/NAME (the `ip netns` convention), so
`ip netns` and every runtime see them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from reconciler.kernel import netns as nsmod

RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000


def path_for(name: str) -> str:
    return name if name.startswith("/") else os.path.join(RUN_DIR, name)


def exists(name_or_path: str) -> bool:
    """A named namespace must be mounted at /run/netns/NAME; a path merely has to exist."""
    if name_or_path.startswith("/") and not name_or_path.startswith(RUN_DIR + "/"):
        return os.path.exists(name_or_path)
    return os.path.ismount(path_for(name_or_path))


def list_names() -> list[str]:
    try:
        return sorted(n for n in os.listdir(RUN_DIR) if not n.startswith("."))
    except FileNotFoundError:
        return []


def create(name: str) -> bool:
    """Create /run/netns/NAME with loopback up; False when it already existed.

    In-process, as `ip netns add` does it: this thread unshares a new network namespace,
    bind-mounts it at /run/netns/NAME, sets lo up over a netlink socket, and goes back
    (~1 ms, where the two `ip` processes cost ~8 ms). The first creation on a host whose
    /run/netns is not yet a shared mount point goes through `ip netns add`, which sets it up.
    Not pyroute2's netns.create: it forks a helper that can time out on a loaded host.
    """
    if exists(name):
        return False
    if not _run_dir_shared():
        return _create_with_ip(name)
    path = path_for(name)
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    except FileExistsError:
        return _mounted_by_another(path)
    try:
        _unshare_and_mount(path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return True


def _mounted_by_another(path: str, wait_s: float = 1.0) -> bool:
    """The file is there but no namespace is mounted on it: another creator of the same name is
    between its two steps (wait for its mount: False, it exists), or it is stale (OSError)."""
    deadline = time.monotonic() + wait_s
    while not os.path.ismount(path):
        if time.monotonic() > deadline:
            raise OSError(errno.EEXIST, f"{path} exists but no network namespace is mounted on it "
                                        f"(stale: `ip netns delete {os.path.basename(path)}` removes it)")
        time.sleep(0.01)
    return False


def clear_stale(name: str) -> bool:
    """Remove /run/netns/NAME when it is a file with no namespace mounted on it, as a namespace
    leaves when its mount is lost without its file: a reboot where /run is not a tmpfs, a crash
    between `create`'s two steps. True when one was removed. Only for names the caller owns and
    no one is creating at the same time (between `create`'s two steps the file is not yet a mount)."""
    path = path_for(name)
    if not os.path.isfile(path) or os.path.ismount(path):
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return True


_RUN_DIR_SHARED = False


def _run_dir_shared() -> bool:
    """True once /run/netns is a mount point with shared propagation (what `ip netns add` makes it)."""
    global _RUN_DIR_SHARED
    if not _RUN_DIR_SHARED:
        try:
            with open("/proc/self/mountinfo") as fh:
                for line in fh:
                    fields = line.split(" - ", 1)[0].split()
                    if len(fields) > 6 and fields[4] == RUN_DIR and any(f.startswith("shared:") for f in fields[6:]):
                        _RUN_DIR_SHARED = True
                        break
        except OSError:
            return False
    return _RUN_DIR_SHARED


def _create_with_ip(name: str) -> bool:
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if proc.returncode != 0:
        if exists(name):
            return False
        raise OSError(f"ip netns add {name}: {proc.stderr.strip()}")
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], capture_output=True)
    return True


MS_BIND = 0x1000


def _unshare_and_mount(path: str) -> None:
    """On this thread: unshare a new netns, bind it at `path`, set lo up, return to the old netns."""
    libc = nsmod.libc()
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        try:
            source = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
            if libc.mount(source, path.encode(), b"none", MS_BIND, None) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"bind mount of a new netns on {path}: {os.strerror(err)}")
            try:
                _loopback_up()
            except OSError:
                libc.umount2(path.encode(), 2)  # MNT_DETACH
                raise
        finally:
            nsmod.setns(home)  # back; if this failed the thread would stay in the new namespace: let it raise
    finally:
        os.close(home)


def _loopback_up() -> None:
    """Set lo (always ifindex 1) up in the current thread's namespace, waiting for the kernel's ack."""
    from reconciler.kernel import rtnl

    sock = rtnl.Socket(None)  # not rtnl.connect: this thread only passes through the new namespace, and a
    # session's cache would keep that socket (and the namespace) until the session ends
    try:
        sock.request(rtnl.RTM_SETLINK, rtnl.NLM_F_ACK, rtnl.IFINFO.pack(0, 0, 1, rtnl.IFF_UP, rtnl.IFF_UP))
    finally:
        sock.close()


def delete(name: str) -> None:
    """Delete /run/netns/NAME (and forget any cached netlink handle to it); a missing one is fine."""
    nsmod.remove(path_for(name))


def session() -> contextlib.AbstractContextManager[None]:
    """One netlink handle per namespace for the whole block (a pass): see kernel.netns.session."""
    return nsmod.session()


def fresh_session() -> contextlib.AbstractContextManager[None]:
    """A new netlink session, ignoring any this process inherited: see kernel.netns.fresh_session."""
    return nsmod.fresh_session()


@dataclass
class LinkState:
    name: str
    up: bool
    kind: str = ""
    addresses: list[str] = field(default_factory=list)  # str(ip_interface): normalised, comparable


def snapshot(path: str | None = None) -> dict[str, LinkState]:
    """Links and addresses of one namespace (None = the current one); OSError when it is gone.

    Read over a raw netlink socket (kernel.nldump, well under 1 ms) into the shared snapshot
    cache, so inside `shared()` the plugins' CHECKs reuse that one read of each namespace.
    """
    from reconciler.kernel import nldump
    from reconciler.kernel.netns import NetnsNotFound

    snap = nldump.prime([path])[path]
    if snap is None:
        raise NetnsNotFound(path_for(path) if path else "/proc/self/ns/net")
    out: dict[str, LinkState] = {}
    for link in snap.links:
        out[link.name] = LinkState(link.name, link.up, link.kind, [])
    by_index = {link.index: out[link.name] for link in snap.links}
    for addr in snap.addresses:
        state = by_index.get(addr.index)
        if state is not None:
            state.addresses.append(str(addr.address))
    return out


def shared(paths: Iterable[str | None] = ()) -> contextlib.AbstractContextManager[Any]:
    """A read-only stretch (observe, verify): every namespace is dumped once and the read is shared.

    `paths` (None = the current namespace) are read up front, over raw netlink (kernel.nldump).
    """
    from reconciler.kernel import nldump

    return nldump.shared(paths)


def veths(names: Iterable[str], path: str | None = None) -> set[str]:
    """Which of `names` are veth links in the namespace (None = the current one), read over raw netlink."""
    from reconciler.kernel import nldump

    wanted = set(names)
    if not wanted:
        return set()
    return {lk.name for lk in nldump.read(path).links if lk.kind == "veth" and lk.name in wanted}


def wait_links_gone(names: Iterable[str], path: str | None = None, timeout: float = 5.0) -> set[str]:
    """Poll until none of `names` is a link of the namespace any more; return those still there at the timeout.

    Deleting a namespace returns at once and the kernel destroys its devices (and their veth peers
    elsewhere) shortly after, in a worker: this waits for that to be over.
    """
    import time

    from reconciler.kernel import nldump

    left = set(names)
    deadline = time.monotonic() + timeout
    delay = 0.002
    while left:
        left &= {lk.name for lk in nldump.read(path).links}
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return left
