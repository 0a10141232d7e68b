"""Unix-socket daemons' start-up: claim the socket path, or take the socket systemd passed.

Shared by the warm-path plugin daemon (`reconciler serve`) and the DHCP lease
daemon. A stale socket file (its daemon was killed) is replaced; a live one
is never stolen. With systemd socket activation (one LISTEN_FDS socket) the
daemon serves the socket it was given and leaves the path to systemd.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

SD_LISTEN_FDS_START = 3


class SocketBusy(RuntimeError):
    """Another live daemon already listens on the path."""


def is_live(path: str | os.PathLike[str]) -> bool:
    """True when something accepts connections on the unix socket at `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def claim(path: str | os.PathLike[str], busy: str) -> bool:
    """Make the socket's directory (0700) and remove a stale socket file; raise SocketBusy(busy) for a live
    one. True when a stale file was replaced."""
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not (target.exists() or target.is_symlink()):
        return False
    if is_live(target):
        raise SocketBusy(busy)
    target.unlink()
    return True


def activated_socket() -> socket.socket | None:
    """The listening socket systemd passed us (LISTEN_PID/LISTEN_FDS), if any; the variables are consumed."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    return socket.socket(fileno=SD_LISTEN_FDS_START)
