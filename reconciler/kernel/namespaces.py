"""Named network namespaces for the reconciler, and a cheap per-namespace snapshot.

Knows nothing of CNI: it takes names and paths and returns plain dicts.
Named namespaces live at /run/netns/NAME (the `ip netns` convention), so
`ip netns` and every runtime see them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

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

    `ip netns add` rather than pyroute2's netns.create: the latter forks a helper
    that can time out on a loaded host ("no response from the child").
    """
    if exists(name):
        return False
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if proc.returncode != 0:
        if exists(name):
            return False
        raise OSError(f"ip netns add {name}: {proc.stderr.strip()}")
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], capture_output=True)
    return True


def delete(name: str) -> None:
    """Delete /run/netns/NAME (and forget any cached netlink handle to it); a missing one is fine."""
    from reconciler.kernel import netns as nsmod

    nsmod.remove(path_for(name))


def session() -> contextlib.AbstractContextManager[None]:
    """One netlink handle per namespace for the whole block (a pass): see kernel.netns.session."""
    from reconciler.kernel import netns as nsmod

    return nsmod.session()


@dataclass
class LinkState:
    name: str
    up: bool
    kind: str = ""
    addresses: list[str] = field(default_factory=list)


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


@contextlib.contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the block with this thread inside the namespace at `path`, then come back."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
    except OSError:
        os.close(home)
        raise
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back: {os.strerror(err)}")
    finally:
        os.close(target)
        os.close(home)


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
