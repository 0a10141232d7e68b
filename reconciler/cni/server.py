"""The warm path: a daemon that runs plugin verbs for the installed launchers.

The launcher sends `(type, environment, stdin)` over a unix socket. The
daemon imports every plugin module, pyroute2 and the firewall libraries once,
then forks a small pool of long-lived workers that accept on the shared
socket. A worker whose network namespace is the caller's (found from the
peer's pid, never from the request: the common case, a runtime in the host
namespace) runs the request itself, with exactly the code a cold launcher
would run (`skel.run`), so results and errors are identical. A request from
any other namespace is run in a child forked for it that enters the caller's
namespace first, so nothing a worker keeps (open handles, caches) ever serves
the wrong namespace; a caller whose mounts differ from the daemon's only under
/sys (`ip netns exec`) has its mount namespace entered by that child as well. A
caller that does not see the daemon's files (another root, other mounts, or a
CNI_NETNS mounted only in its own mount namespace) is answered by hanging up,
and its launcher runs the plugin cold in its own view. Work for one
container is serialised with a lock file per container id; independent
requests run in parallel on different workers.

A worker that dies (a crashing native library) is replaced; a worker retires
after `MAX_REQUESTS` so nothing it accumulates lives forever.

Trust boundary: the socket is owner-only, peers are checked with SO_PEERCRED
(root or our own uid), requests are size-limited and malformed ones refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from reconciler import activation
from reconciler.cni import wire
from reconciler.kernel import netns as nsmod

log = logging.getLogger("reconciler.serve")

DEFAULT_SOCKET = "/run/cni-reconciler/plugin.sock"
ACCEPT_TIMEOUT = 0.5
REQUEST_TIMEOUT = 10.0
MAX_REQUESTS = 2000
PRELOAD = ("pyroute2", "iptc")


def default_socket() -> str:
    """Where launchers look for the daemon (RECONCILER_PLUGIN_SOCKET overrides, as in the launcher)."""
    return os.environ.get("RECONCILER_PLUGIN_SOCKET") or DEFAULT_SOCKET


def default_workers() -> int:
    return max(2, min(8, 2 * (os.cpu_count() or 1)))


def preload() -> None:
    """Import every plugin module and the heavy libraries so workers start warm. Relative entries of
    sys.path ('' under `python -c`) are made absolute first: requests run in the caller's directory,
    and a later import must not find modules there."""
    import importlib

    from reconciler.cni.registry import implemented
    from reconciler.cni.skel import load_module

    sys.path[:] = [os.path.abspath(entry) for entry in sys.path]

    for name in PRELOAD:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    for ptype in implemented():
        try:
            load_module(ptype)
        except Exception as exc:  # a broken plugin module must not stop the others being served
            log.warning("could not preload plugin %s: %s", ptype, exc)
    build_models()


def build_models() -> None:
    """Build every model's validator now: models defer that to first use (a cold start builds only
    what its verb needs), and workers should not each pay for it on their first request."""
    from pydantic import BaseModel

    pending = list(BaseModel.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("reconciler."):
            try:
                cls.model_rebuild()
            except Exception as exc:  # a generic or forward-referencing model: it builds on first use
                log.debug("model %s not prebuilt: %s", cls.__qualname__, exc)


def bind(path: str) -> socket.socket:
    """Bind the owner-only socket under a temporary name (`publish` puts it in place).

    A stale socket file is replaced; a live one is never stolen.
    """
    activation.claim(path, f"another daemon is already serving {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pending = _pending(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pending)
    old = os.umask(0o177)
    try:
        sock.bind(pending)
    finally:
        os.umask(old)
    os.chmod(pending, 0o600)
    sock.listen(128)
    return sock


def _pending(path: str) -> str:
    return f"{path}.{os.getpid()}.new"


def publish(path: str) -> None:
    """Move the bound socket to its real name: launchers only see it once workers are accepting."""
    os.rename(_pending(path), path)


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


def _reply_error(conn: socket.socket, code: int, msg: str, details: str) -> None:
    from reconciler.errors import CNIError

    wire.write_reply(conn, 1, CNIError(code, msg, details).to_json().encode() + b"\n")


class Caller:
    """What a cold run inherits from the runtime besides its environment: its umask (the mode of
    every directory a plugin creates), its working directory (a relative path in a config) and its
    stderr (sent with the request by the launchers).
    Raises OSError (or ValueError) when the caller is gone or cannot be read."""

    def __init__(self, pid: int, stderr: int | None = None) -> None:
        self.stderr = stderr  # the descriptor that came with the request, if any (its owner closes it)
        with open(f"/proc/{pid}/status", "rb") as status:
            line = next((ln for ln in status if ln.startswith(b"Umask:")), None)
        if line is None:
            raise ValueError(f"no umask for pid {pid}")
        self.umask = int(line.split()[1], 8)
        self.cwd = os.open(f"/proc/{pid}/cwd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.cwd)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """This process with the caller's umask and working directory; ours again afterwards."""
        here = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        ours = os.umask(self.umask)
        try:
            os.fchdir(self.cwd)
            yield
        finally:
            os.fchdir(here)
            os.umask(ours)
            os.close(here)


def adopt_environment(env: dict[str, str]) -> None:
    """Make os.environ exactly `env`, touching only what differs (callers mostly differ in CNI_*:
    ~30 µs, where clear() and update() cost ~110). A worker reads nothing from its environment
    between requests, so each request adopts its caller's and none is restored."""
    current = os.environ
    for key in [k for k in current if k not in env]:
        del current[key]
    for key, value in env.items():
        if current.get(key) != value:
            current[key] = value


@functools.lru_cache(maxsize=16)
def _log_handler(level: str | None, fmt: str | None) -> logging.Handler:
    """One handler per level and format callers ask for (it writes to whatever fd 2 is)."""
    from reconciler.logs import stderr_handler

    return stderr_handler(level, fmt)


@contextlib.contextmanager
def callers_stderr(fd: int | None) -> Iterator[None]:
    """fd 2 is the caller's stderr (`fd`, passed with the request) while a request runs, and the log
    handler is the one its RECONCILER_LOG_LEVEL / RECONCILER_LOG_FORMAT make, as in a cold run: the
    plugin's log lines, a traceback and an exec'd plugin's stderr reach the runtime. Ours afterwards.
    Without `fd` (an older launcher) they go to the daemon's stderr.

    The handler filters by the caller's level; the root logger's level is lowered to it only when the
    caller asks for more than the daemon logs (setting it empties every logger's level cache)."""
    if fd is None:
        yield
        return
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    ours = os.dup(2)
    try:
        os.dup2(fd, 2)
        handler = _log_handler(os.environ.get("RECONCILER_LOG_LEVEL"), os.environ.get("RECONCILER_LOG_FORMAT"))
        root.handlers[:] = [handler]
        if handler.level < level:
            root.setLevel(handler.level)
        yield
    finally:
        with contextlib.suppress(OSError):
            sys.stderr.flush()  # a caller gone meanwhile: its lines are lost, as they would be cold
        os.dup2(ours, 2)
        os.close(ours)
        root.handlers[:] = handlers
        if root.level != level:
            root.setLevel(level)


def _run(request: wire.Request, lock_dir: Path, caller: Caller) -> tuple[int, str]:
    """Run one request with the caller's environment, umask, working directory and stderr (what a
    cold run, and the plugins it execs, would have); they are ours again afterwards but the
    environment."""
    from reconciler.cni.skel import run

    adopt_environment(request.env)
    with caller.applied(), callers_stderr(caller.stderr):
        if request.env.get("CNI_CONTAINERID"):
            with container_lock(lock_dir, request.env["CNI_CONTAINERID"]):
                return run(request.plugin_type, request.env, request.stdin)
        return run(request.plugin_type, request.env, request.stdin)


def _run_in_caller_namespaces(conn: socket.socket, pid: int, request: wire.Request, lock_dir: Path,
                              caller: Caller, *, mounts: bool) -> None:
    """A caller in another network namespace, or with a sysfs of its own: a child forked for this
    request enters the caller's network namespace (and, when `mounts`, its mount namespace, so reads
    under /sys, and the plugins it execs, see the caller's sysfs) and runs the request."""
    from reconciler.errors import INVALID_NETNS

    child = os.fork()
    if child == 0:
        code = 0
        try:
            try:
                nsmod.join_process(pid, mounts=mounts)
            except OSError as exc:
                _reply_error(conn, INVALID_NETNS, "cannot enter the caller's namespaces", str(exc))
            else:
                status, out = _run(request, lock_dir, caller)
                wire.write_reply(conn, status, out.encode())
        except BaseException:  # noqa: BLE001 - the child never returns into the worker loop
            log.exception("plugin request failed")
            code = 1
        finally:
            os._exit(code)
    os.waitpid(child, 0)


def mounts(mountinfo: str) -> list[tuple[str, ...]] | None:
    """The mounts a mount namespace shows (/proc/PID/mountinfo), as (mount point, root in its
    filesystem, device, type, source), sorted; None when it cannot be read."""
    try:
        with open(mountinfo, "rb") as table:
            lines = table.read().decode(errors="surrogateescape").splitlines()
    except OSError:
        return None
    out = []
    for line in lines:
        head, _, tail = line.partition(" - ")
        fields, kind = head.split(), tail.split()
        if len(fields) >= 5 and len(kind) >= 2:
            out.append((fields[4], fields[3], fields[2], kind[0], kind[1]))
    return sorted(out)


def _outside_sys(table: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    return [m for m in table if m[0] != "/sys" and not m[0].startswith("/sys/")]


SAME_FILES = "same files"
OWN_SYSFS = "same files, its own /sys"


def caller_view(pid: int) -> str | None:
    """How the caller's files compare with the daemon's: SAME_FILES (the same root directory and mount
    namespace, or another with the same mounts), OWN_SYSFS (the same, but under /sys: `ip netns exec`
    mounts a sysfs of its target namespace there), or None. Then every absolute path (CNI_NETNS, a
    config's dataDir) names the same file for both, and a relative one is walked from the caller's
    own directory (`Caller.applied`). A runtime in a container, one with a private /tmp (systemd's
    PrivateTmp=), or one whose CNI_NETNS is a mount of its own sees other files (None), and only a
    cold run in its own view gives it what it asked for."""
    if nsmod.identity(f"/proc/{pid}/root") != nsmod.identity("/"):
        return None
    if nsmod.identity(f"/proc/{pid}/ns/mnt") == nsmod.identity("/proc/self/ns/mnt"):
        return SAME_FILES
    theirs, ours = mounts(f"/proc/{pid}/mountinfo"), mounts("/proc/self/mountinfo")
    if theirs is None or ours is None:
        return None
    if theirs == ours:
        return SAME_FILES
    return OWN_SYSFS if _outside_sys(theirs) == _outside_sys(ours) else None


def handle(conn: socket.socket, lock_dir: Path, home: tuple[int, int] | None = None) -> None:
    """Serve one accepted connection (in a worker, whose namespace is `home`).

    A caller that does not see our files (`caller_view`), or whose umask and working directory
    cannot be read (`Caller`), is answered by hanging up before anything runs: both launchers take a
    hang-up before the reply as "run it here", so it gets a cold run. The launchers send their stderr
    with the request's first bytes; a descriptor not open for writing is dropped."""
    from reconciler.errors import DECODING_FAILURE

    conn.settimeout(REQUEST_TIMEOUT)
    pid, _uid, _gid = peer_credentials(conn)
    stderr = None
    try:
        try:
            head, fds, _flags, _addr = socket.recv_fds(conn, len(wire.MAGIC), 1)
            stderr = _writable(fds[0]) if fds else None
            request = wire.read_request(conn.makefile("rb"), head)
        except wire.WireError as exc:
            _reply_error(conn, DECODING_FAILURE, "malformed request", str(exc))
            return
        _serve(conn, pid, request, stderr, lock_dir, home)
    finally:
        if stderr is not None:
            os.close(stderr)


def _writable(fd: int) -> int | None:
    """`fd` when it is open for writing (else closed, and None)."""
    with contextlib.suppress(OSError):
        if (fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR):
            return fd
    os.close(fd)
    return None


def _serve(conn: socket.socket, pid: int, request: wire.Request, stderr: int | None, lock_dir: Path,
           home: tuple[int, int] | None) -> None:
    """Run a decoded request where the caller's view says (`handle`'s rules), or hang up."""
    from reconciler.errors import INVALID_NETNS

    view = caller_view(pid)
    if view is None:
        log.debug("pid %d sees other files (its root or mounts): hung up, its launcher runs the plugin", pid)
        return
    try:
        caller = Caller(pid, stderr)
    except (OSError, ValueError) as exc:
        log.debug("cannot read pid %d's umask or working directory (%s): hung up", pid, exc)
        return
    try:
        log.debug("serving %s %s for pid %d", request.env.get("CNI_COMMAND"), request.plugin_type, pid)
        netns = nsmod.identity(f"/proc/{pid}/ns/net")
        if netns is None:
            _reply_error(conn, INVALID_NETNS, "cannot find the caller's network namespace", f"peer pid {pid}")
            return
        if view == OWN_SYSFS or netns != (home or nsmod.identity(None)):
            _run_in_caller_namespaces(conn, pid, request, lock_dir, caller, mounts=view == OWN_SYSFS)
            return
        code, out = _run(request, lock_dir, caller)
        wire.write_reply(conn, code, out.encode())
    finally:
        caller.close()


class Worker:
    """One long-lived process accepting on the shared socket."""

    def __init__(self, sock: socket.socket, lock_dir: Path, parent: int) -> None:
        self.sock = sock
        self.lock_dir = lock_dir
        self.parent = parent
        self.stopping = False

    def _stop(self, *_: object) -> None:
        self.stopping = True

    def _authorised(self, conn: socket.socket) -> bool:
        _pid, uid, _gid = peer_credentials(conn)
        return uid in (0, os.getuid())

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        home = nsmod.identity(None)
        served = 0
        while not self.stopping and served < MAX_REQUESTS and os.getppid() == self.parent:
            try:
                ready, _, _ = select.select([self.sock], [], [], ACCEPT_TIMEOUT)
            except InterruptedError:
                continue
            if not ready:
                continue
            try:
                conn, _ = self.sock.accept()  # non-blocking: another worker may have taken it
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ECONNABORTED):
                    continue
                raise
            served += 1
            try:
                conn.setblocking(True)
                if self._authorised(conn):
                    handle(conn, self.lock_dir, home)
                else:
                    log.warning("refused a plugin request from an unauthorised peer")
            except Exception:  # one failed request (a peer gone mid-reply) must not end the worker
                log.exception("plugin request failed")
            finally:
                conn.close()


class Server:
    """Preload, bind, and keep a pool of workers alive until stopped."""

    def __init__(self, path: str | None = None, workers: int | None = None) -> None:
        self.path = path or default_socket()
        self.lock_dir = Path(self.path).absolute().parent / "locks"  # requests run in the caller's cwd
        self.workers = workers or default_workers()
        self.stopping = False
        self.sock: socket.socket | None = None
        self.activated = False  # the socket came from systemd, which owns its path
        self.pids: set[int] = set()

    def start(self) -> None:
        preload()
        inherited = activation.activated_socket()
        self.activated = inherited is not None
        self.sock = inherited if inherited is not None else bind(self.path)
        self.sock.setblocking(False)
        for _ in range(self.workers):
            self._spawn()
        if not self.activated:
            publish(self.path)
        log.info("serving plugins on %s with %d workers%s", self.path, self.workers,
                 " (socket from systemd)" if self.activated else "")

    def _spawn(self) -> None:
        assert self.sock is not None
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                Worker(self.sock, self.lock_dir, parent).run()
            except BaseException:  # noqa: BLE001 - the worker never returns into the server loop
                log.exception("plugin worker failed")
                code = 1
            finally:
                os._exit(code)
        self.pids.add(pid)

    def _reap(self) -> int:
        """Collect exited workers (only ours: never another child's status); returns how many."""
        gone = 0
        for pid in list(self.pids):
            with contextlib.suppress(ChildProcessError):
                done, _status = os.waitpid(pid, os.WNOHANG)
                if done == 0:
                    continue
            self.pids.discard(pid)
            gone += 1
        return gone

    def serve_forever(self) -> None:
        if self.sock is None:
            self.start()
        try:
            while not self.stopping:
                for _ in range(self._reap()):
                    if not self.stopping:
                        self._spawn()
                time.sleep(0.2)
        finally:
            self.close()

    def stop(self) -> None:
        self.stopping = True

    def close(self) -> None:
        """Stop accepting, let workers finish the request in hand, remove the socket."""
        if self.sock is not None:
            if not self.activated:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            for pid in self.pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + REQUEST_TIMEOUT + 1
            while self.pids and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.05)
            for pid in self.pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._reap()
            self.sock.close()
            self.sock = None
