"""The warm path: a daemon that runs plugin verbs for the installed launchers.

The launcher sends `(type, CNI environment, stdin)` over a unix socket. Each
request is served in a child forked from this already-warm process (every
plugin module, pyroute2 and the firewall libraries imported once): the child
enters the *caller's* network namespace (found from the peer's pid, never
from the request), applies the caller's CNI environment and runs exactly the
code a cold launcher would (`skel.run`), so results and errors are identical
and a crashing plugin can never take the daemon down. Work for one container
is serialised with a lock file per container id.

Trust boundary: the socket is owner-only, peers are checked with SO_PEERCRED
(root or our own uid), requests are size-limited and malformed ones refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import signal
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

from reconciler.cni import wire

log = logging.getLogger("reconciler.serve")

DEFAULT_SOCKET = "/run/cni-reconciler/plugin.sock"


def default_socket() -> str:
    """Where launchers look for the daemon (RECONCILER_PLUGIN_SOCKET overrides, as in the launcher)."""
    return os.environ.get("RECONCILER_PLUGIN_SOCKET") or DEFAULT_SOCKET
ACCEPT_TIMEOUT = 0.5
REQUEST_TIMEOUT = 10.0
PRELOAD = ("pyroute2", "iptc")


def preload() -> None:
    """Import every plugin module and the heavy libraries so forked children start warm."""
    import importlib

    from reconciler.cni.registry import implemented

    for name in PRELOAD:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    for ptype in implemented():
        try:
            from reconciler.cni.skel import load_module

            load_module(ptype)
        except Exception as exc:  # a broken plugin module must not stop the others being served
            log.warning("could not preload plugin %s: %s", ptype, exc)


def _socket_is_live(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1)
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def bind(path: str) -> socket.socket:
    """Bind the owner-only socket; replace a stale file, refuse to steal a live one."""
    directory = Path(path).parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.path.exists(path):
        if _socket_is_live(path):
            raise RuntimeError(f"another daemon is already serving {path}")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    return sock


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


@contextlib.contextmanager
def container_lock(lock_dir: Path, container_id: str) -> Iterator[None]:
    """Serialise work per container (ids are validated by skel before they get here)."""
    safe = "".join(c for c in container_id if c.isalnum() or c in "-_.")[:200] or "_"
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(lock_dir / safe, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def handle(conn: socket.socket, lock_dir: Path) -> None:
    """Serve one request (runs in the forked child)."""
    from reconciler.cni.skel import run
    from reconciler.errors import DECODING_FAILURE, INVALID_NETNS, CNIError
    from reconciler.kernel.netns import _setns

    conn.settimeout(REQUEST_TIMEOUT)
    pid, _uid, _gid = peer_credentials(conn)
    try:
        request = wire.read_request(conn.makefile("rb"))
    except wire.WireError as exc:
        wire.write_reply(conn, 1, CNIError(DECODING_FAILURE, "malformed request", str(exc)).to_json().encode() + b"\n")
        return
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        _setns(fd)
        os.close(fd)
    except OSError as exc:
        err = CNIError(INVALID_NETNS, "cannot enter the caller's network namespace", str(exc))
        wire.write_reply(conn, 1, err.to_json().encode() + b"\n")
        return
    for key in [k for k in os.environ if k.startswith("CNI_")]:
        del os.environ[key]
    os.environ.update(request.env)
    if request.env.get("CNI_CONTAINERID"):
        with container_lock(lock_dir, request.env["CNI_CONTAINERID"]):
            code, out = run(request.plugin_type, request.env, request.stdin)
    else:
        code, out = run(request.plugin_type, request.env, request.stdin)
    wire.write_reply(conn, code, out.encode())


class Server:
    """Accept loop; one forked child per request."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or default_socket()
        self.lock_dir = Path(path).parent / "locks"
        self.stopping = threading.Event()
        self.sock: socket.socket | None = None

    def start(self) -> None:
        preload()
        self.sock = bind(self.path)
        log.info("serving plugins on %s", self.path)

    def _authorised(self, conn: socket.socket) -> bool:
        _pid, uid, _gid = peer_credentials(conn)
        return uid in (0, os.getuid())

    def _reap(self) -> None:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def serve_forever(self) -> None:
        if self.sock is None:
            self.start()
        assert self.sock is not None
        try:
            while not self.stopping.is_set():
                self._reap()
                ready, _, _ = select.select([self.sock], [], [], ACCEPT_TIMEOUT)
                if not ready:
                    continue
                try:
                    conn, _ = self.sock.accept()
                except OSError as exc:
                    if exc.errno in (errno.EINTR, errno.EAGAIN):
                        continue
                    raise
                self._dispatch(conn)
        finally:
            self.close()

    def _dispatch(self, conn: socket.socket) -> None:
        try:
            if not self._authorised(conn):
                log.warning("refused a plugin request from an unauthorised peer")
                return
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    signal.signal(signal.SIGHUP, signal.SIG_DFL)
                    if self.sock is not None:
                        self.sock.close()
                    handle(conn, self.lock_dir)
                except BaseException:  # noqa: BLE001 - the child never returns into the server loop
                    log.exception("plugin request failed")
                    code = 1
                finally:
                    os._exit(code)
        finally:
            conn.close()

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self._reap()

    def start_thread(self) -> threading.Thread:
        """Serve in a background thread (used by `reconciler watch`)."""
        self.start()
        thread = threading.Thread(target=self.serve_forever, name="plugin-server", daemon=True)
        thread.start()
        return thread
