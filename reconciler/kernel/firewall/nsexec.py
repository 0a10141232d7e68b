"""Run a callable inside another network namespace.

python-iptables and libnftables act on the netns of the calling *thread*
(their sockets are opened by the thread that creates the handle), so the
callable runs in a short-lived thread that has `setns(2)`-ed into the target
namespace first. The rest of the process, and every other thread, stays where
it was; nothing has to be restored afterwards.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

from reconciler.kernel import netns as nsmod

T = TypeVar("T")


def netns_path(netns: str) -> str:
    """A netns name (under /run/netns) or a path -> the path."""
    return netns if netns.startswith("/") else f"/run/netns/{netns}"


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        nsmod.setns(fd)
    except OSError as exc:
        raise OSError(exc.errno, f"setns({path}): {exc.strerror}") from exc
    finally:
        os.close(fd)


def run_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Call `fn()` in `netns` (None: the current thread's netns) and return its result."""
    if netns is None:
        return fn()
    path = netns_path(netns)
    box: dict[str, object] = {}

    def target() -> None:
        try:
            _setns(path)
            box["result"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns:{os.path.basename(path)}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]
