"""Named network namespaces for the reconciler, and a cheap per-namespace snapshot.

Knows nothing of CNI: it takes names and paths and returns plain dicts.
Named namespaces live at /run/netns/NAME (the `ip netns` convention), so
`ip netns` and every runtime see them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass, field

RUN_DIR = "/run/netns"


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
    """Links and addresses of one namespace (None = the current one).

    Read through kernel.snapshot, so inside `shared()` the plugins' CHECKs of the
    same pass reuse this very read instead of dumping the namespace again.
    """
    from reconciler.kernel import snapshot as snapmod

    snap = snapmod.snapshot(path)
    out: dict[str, LinkState] = {}
    for link in snap.links:
        state = LinkState(name=link.name, up=link.up, kind=link.kind)
        state.addresses = [str(a.address) for a in snap.addrs_of(link.name)]
        out[link.name] = state
    return out


def shared() -> contextlib.AbstractContextManager[None]:
    """A read-only stretch (observe, verify): every namespace is dumped once and the read is shared."""
    from reconciler.kernel import snapshot as snapmod

    return snapmod.shared()
