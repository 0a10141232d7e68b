"""The allocation store in the reference host-local's on-disk format.

Layout of ``<dataDir>/<network>/`` (shared with /usr/lib/cni/host-local):
``<ip>`` files holding ``<containerID>\\r\\n<ifname>`` (pre-0.7 files hold only
the id), ``last_reserved_ip.<rangeSetIndex>``, and ``lock``, a file both
implementations ``flock(LOCK_EX)`` around every read-modify-write.

Crash safety: a reservation is written to an unnamed temporary file, then
``link(2)``-ed to its final name under the lock (which fails instead of
overwriting an existing reservation); the file and then the directory are
fsync'd after the lock is released and before a result is returned. A process
killed at any instant leaves either a complete reservation or none (the content
is in the page cache before the name exists), plus at most a named temporary
(the fallback without ``O_TMPFILE``) that the next locked scan removes. A power
cut before those fsyncs may leave the name without its content; an empty or
garbled reservation (also what the reference leaves when killed between
``O_CREAT|O_EXCL`` and its write) is never trusted: the locked scan reclaims it.
Its holder died with the machine, and no result named it. Fsync'ing the file
after the link rather than before lets a journaling filesystem commit the
content and the name together, so the directory's fsync finds nothing left to
commit (`bench/README.md`: 1.3-1.7x the allocations/s of fsync-then-link). Inside a
reconciler pass the fsyncs are deferred to the pass's one syncfs
(`kernel.durable`): the pass journals every step durably first, so a machine
that goes down before that sync has its ADDs undone by the next pass.

Reading: the reference reads every reservation under the lock on every ADD
(to find the caller's existing one). Our ADD looks before it takes the lock
(`DiskStore.snapshot`): a process that allocates repeatedly keeps its last
scan (`_MEMO`). Its second ADD lists the directory once more, reading only
entries whose name or inode number is new, and arms an inotify watch first
(`kernel.dirwatch`); every later ADD re-reads just the names the watch
reports changed, without listing (a listing costs O(reservations), the watch
O(changes)). Under the lock it re-reads only the caller's own reservations,
links, and writes the round-robin hint. DEL, CHECK, GC and STATUS read
everything under the lock.

Path safety: the network name is validated, the network directory is opened
with ``O_NOFOLLOW`` and every file is opened relative to it, again without
following symlinks. Everything we create is owner-only.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from reconciler.errors import INVALID_NETWORK_CONFIG, IO_FAILURE, CNIError
from reconciler.kernel import dirwatch, durable

log = logging.getLogger("reconciler.ipam.host-local")

LOCK_NAME = "lock"
LAST_PREFIX = "last_reserved_ip."
TMP_PREFIX = ".rcn-tmp-"
LINE_BREAK = "\r\n"
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
DIR_MODE = 0o700
FILE_MODE = 0o600
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
_RDONLY = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Owner:
    """Who holds a reservation; `ifname` is None for pre-0.7 id-only files."""

    container_id: str
    ifname: str | None

    def matches(self, container_id: str, ifname: str) -> bool:
        return self.container_id == container_id.strip() and self.ifname in (ifname, None)

    def encode(self) -> bytes:
        return f"{self.container_id}{LINE_BREAK}{self.ifname}".encode()


def parse_owner(data: bytes) -> Owner | None:
    """The reservation's holder, or None for a half-written file (empty, or NULs from a lost write).

    Any other content is trusted as taken, even an id our own validation would refuse:
    freeing an address on a guess could hand it out twice.
    """
    if b"\x00" in data:
        return None
    text = data.decode("utf-8", "surrogateescape").strip()
    if not text:
        return None
    cid, sep, ifname = text.partition(LINE_BREAK)
    return Owner(cid.strip(), ifname.strip() if sep else None)


@lru_cache(maxsize=65536)
def ip_name(name: str) -> IPAddr | None:
    """The address a directory entry reserves, or None if it is not a reservation file."""
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


@dataclass
class Scan:
    """A view of the network directory: under the lock, or ADD's `snapshot` (see there)."""

    owners: dict[str, Owner]  # ip string -> holder
    foreign: set[str]  # reservation names we cannot read (symlinks, directories): taken, untouched
    ips: dict[str, IPAddr]  # every reservation name (owned or foreign) -> its address
    inodes: dict[str, int] = field(default_factory=dict)  # name -> inode number, when known
    _index: dict[tuple[str, str | None], list[str]] | None = field(default=None, repr=False)

    def taken(self, name: str) -> bool:
        return name in self.owners or name in self.foreign

    def held_by(self, container_id: str, ifname: str) -> list[str]:
        if self._index is None:
            self._index = {}
            for n, o in self.owners.items():
                self._index.setdefault((o.container_id, o.ifname), []).append(n)
        exact = self._index.get((container_id, ifname))
        return list(exact or self._index.get((container_id, None)) or [])

    def add(self, name: str, owner: Owner, ip: IPAddr) -> None:
        self.forget(name)
        self.owners[name] = owner
        self.ips[name] = ip
        if self._index is not None:
            self._index.setdefault((owner.container_id, owner.ifname), []).append(name)

    def forget(self, name: str) -> None:
        owner = self.owners.pop(name, None)
        self.foreign.discard(name)
        self.ips.pop(name, None)
        self.inodes.pop(name, None)
        if owner is not None and self._index is not None:
            self._index[(owner.container_id, owner.ifname)].remove(name)


@dataclass
class Memo:
    """This process's scan at the end of its last ADD in a directory, and the watch armed before the
    listing it came from (None after a first ADD: the next one arms it and lists once more)."""

    scan: Scan
    watch: dirwatch.Watch | None


# Per process: network directory path -> its memo.
_MEMO: dict[str, Memo] = {}


def _dev_ino(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def validate_network(name: str) -> None:
    if not name or not NAME_RE.match(name):
        raise CNIError(INVALID_NETWORK_CONFIG, "invalid characters found in network name", name)


class DiskStore:
    """One network's directory. Use `open()`, then `locked()` around every transaction."""

    def __init__(self, dir_fd: int, path: str) -> None:
        self.fd = dir_fd
        self.path = path
        self._lock_fd: int | None = None
        self._dirty = False
        self._prepared: dict[Owner, list[int]] = {}  # O_TMPFILE fds holding an owner's content
        self._linked: list[tuple[int, str, Owner]] = []  # (fd, name, holder) linked in this transaction
        self.current: Scan | None = None  # the locked transaction's scan
        self._watch: dirwatch.Watch | None = None  # armed before this store's listings, if any

    @classmethod
    def open(cls, data_dir: str, network: str, *, create: bool = True) -> DiskStore | None:
        """Open (creating if asked) `<data_dir>/<network>`; None if absent and not creating."""
        validate_network(network)
        path = os.path.join(data_dir, network)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                fd = os.open(path, flags)
            except FileNotFoundError:
                if not create:
                    raise
                os.makedirs(data_dir, mode=DIR_MODE, exist_ok=True)
                with suppress(FileExistsError):
                    os.mkdir(path, DIR_MODE)
                fd = os.open(path, flags)
        except FileNotFoundError:
            if create:
                raise CNIError(IO_FAILURE, f"cannot create allocation store {path}") from None
            return None
        except OSError as exc:
            raise CNIError(
                IO_FAILURE, f"cannot open allocation store {path}", exc.strerror or str(exc)
            ) from exc
        return cls(fd, path)

    def close(self) -> None:
        for fds in self._prepared.values():
            for fd in fds:
                os.close(fd)
        self._prepared.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        os.close(self.fd)

    def __enter__(self) -> DiskStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def locked(self, hint: Scan | None = None, *, remember: bool = False) -> Iterator[Scan]:
        """Hold the network's lock (the reference's discipline) and yield a scan of the directory.

        The scan is read in full under the lock, unless `hint` (ADD's `snapshot()`, taken just
        before) is given: see `snapshot` for what it may get wrong and why that is harmless.
        `rescan()` replaces it with a full one. With `remember`, the final scan is kept for this
        process's next `snapshot()` if the transaction completed.
        """
        if self._lock_fd is None:
            try:
                self._lock_fd = os.open(
                    LOCK_NAME,
                    os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                    FILE_MODE,
                    dir_fd=self.fd,
                )
            except OSError as exc:
                raise CNIError(IO_FAILURE, f"cannot open lock in {self.path}", exc.strerror or "") from exc
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._dirty = False
        try:
            _MEMO.pop(self.path, None)
            self.current = hint if hint is not None else self.scan()
            yield self.current
            if remember:
                _MEMO[self.path] = Memo(self.current, self._watch)
        except BaseException:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            self._close_linked(sync=False)
            raise
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        # Durable before the caller reports success: the linked files' content, then their names.
        # Outside the lock: another writer's fsync of the directory may persist our names first,
        # but a name without its content is never trusted (see the module's crash safety).
        linked = list(self._linked)
        try:
            self._close_linked(sync=True)
            if self._dirty:
                durable.fsync(self.fd)
        except OSError as exc:
            self._unreserve(linked)
            raise CNIError(IO_FAILURE, f"cannot sync allocation store {self.path}", exc.strerror or "") from exc

    def _close_linked(self, *, sync: bool) -> None:
        linked, self._linked = self._linked, []
        try:
            for fd, _, _ in linked:
                if sync:
                    durable.fsync(fd)
        finally:
            for fd, _, _ in linked:
                os.close(fd)

    def _unreserve(self, linked: list[tuple[int, str, Owner]]) -> None:
        """Undo a transaction's links that could not be made durable (best effort, under the lock)."""
        _MEMO.pop(self.path, None)
        assert self._lock_fd is not None
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            for _, name, owner in linked:
                with suppress(OSError):
                    if self.holds(name, owner):
                        self._unlink(name)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def rescan(self) -> Scan:
        """A full scan replacing the current one (caller holds the lock)."""
        self.current = self.scan()
        return self.current

    # Reading

    def scan(self) -> Scan:
        """Read every reservation; drop temporaries and untrustworthy files (caller holds the lock)."""
        scan = self._list(None, locked=True)
        assert scan is not None
        return scan

    def snapshot(self) -> Scan | None:
        """ADD's view of the directory, taken without the lock; None if only a locked scan will do.

        It starts from this process's scan after its previous ADD here (`_MEMO`). With the watch
        armed before that scan's listing, the names it reports changed (created, deleted, moved,
        written) are re-read and nothing else: the kernel queues the event before the change's
        system call returns, so every change completed before this call is in the list. Without
        one (the second ADD, or the watch lost track: queue overflow, the directory moved, a
        forked process), one listing, where entries whose name and inode number are unchanged
        keep their recorded holder and the rest are read. Reservation files are never rewritten
        in place (both implementations create them once, under the lock), so an unchanged inode
        means unchanged content unless the name was deleted and re-created with a recycled inode
        number. Being unlocked, the view may also miss changes made while it is taken. None of
        this can hand an address out twice (`link(2)` under the lock refuses existing names; a
        stale "taken" only skips an address, and the allocation is retried on a full scan before
        any error is returned) or lose one (nothing is removed on its evidence). What it must get
        right is the caller's own reservations (ADD returns them): a completed ADD's file is in
        every later listing and change list, the runtime never runs two operations for one
        attachment in parallel, and `confirm` re-reads them under the lock. Temporaries and empty
        or garbled reservations (crash leftovers, or the reference writing right now) give None:
        the locked scan judges.
        """
        memo = _MEMO.pop(self.path, None)
        if memo is None:
            return self._list(None, locked=False)  # a first ADD here (a cold plugin's only one): no watch
        watch = memo.watch
        names = watch.changes() if watch is not None and watch.dev_ino == _dev_ino(self.fd) else None
        if names is not None:
            self._watch = watch
            return self._update(memo.scan, names)
        self._watch = dirwatch.Watch.arm(self.fd)  # before the listing: it sees every later change
        return self._list(memo.scan, locked=False)

    def confirm(self, scan: Scan, owner: Owner) -> bool:
        """Under the lock: do `owner`'s reservations in `scan` still hold exactly that?"""
        assert owner.ifname is not None
        for name in scan.held_by(owner.container_id, owner.ifname):
            data = self._read(name)
            if data is None or parse_owner(data) != scan.owners[name]:
                return False
        return True

    def holds(self, name: str, owner: Owner) -> bool:
        """Does reservation `name` exist and name `owner` (an id-only legacy file: its id)?"""
        data = self._read(name, missing=None)
        holder = parse_owner(data) if data is not None else None
        return holder is not None and owner.ifname is not None and holder.matches(owner.container_id, owner.ifname)

    def _list(self, memo: Scan | None, *, locked: bool) -> Scan | None:
        """Read the directory into a scan; with `memo`, update it in place, reading only what changed."""
        with os.scandir(self.fd) as entries:
            listing = {entry.name: entry.inode() for entry in entries}
        if memo is None:
            scan = Scan({}, set(), {}, {})
        else:
            scan = memo
            known = scan.inodes
            for name in [n for n in scan.ips if n not in known or listing.get(n) != known[n]]:
                scan.forget(name)  # gone, replaced, or never read (ours, linked without its inode)
        for name, ino in listing.items():
            if name not in scan.ips and not self._admit(scan, name, ino, locked=locked):
                return None
        return scan

    def _update(self, scan: Scan, names: set[str]) -> Scan | None:
        """`scan` brought up to date by re-reading `names`, every entry changed since it was taken."""
        for name in names:
            if ip_name(name) is None and not name.startswith(TMP_PREFIX):
                continue  # the lock, round-robin hints, foreign files
            scan.forget(name)  # re-read whatever happened to it: a recycled inode number looks unchanged
            try:
                ino = os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_ino
            except FileNotFoundError:
                continue
            if not self._admit(scan, name, ino, locked=False):
                return None
        return scan

    def _admit(self, scan: Scan, name: str, ino: int, *, locked: bool) -> bool:
        """Add entry `name` (not in `scan`) to it; False if only a locked scan may judge it."""
        if name.startswith(TMP_PREFIX):
            if not locked:
                return False
            self._unlink(name)
            log.warning("removed temporary file %s left by a killed process", name)
            return True
        ip = ip_name(name)
        if ip is None:
            return True
        data = self._read(name, missing=b"" if locked else None)
        if data is None:
            if not locked and not self._exists(name):
                return True  # released since the listing
            scan.foreign.add(name)
            scan.ips[name] = ip
            scan.inodes[name] = ino
            return True
        holder = parse_owner(data)
        if holder is None:
            if not locked:
                return False
            log.warning("reclaiming half-written reservation %s/%s (content %r)", self.path, name, data[:64])
            self._unlink(name)
            return True
        scan.add(name, holder, ip)
        scan.inodes[name] = ino
        return True

    def _exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def _read(self, name: str, missing: bytes | None = b"") -> bytes | None:
        """Content of regular file `name`; None if it is something else; `missing` if absent."""
        try:
            fd = os.open(name, _RDONLY | os.O_NONBLOCK, dir_fd=self.fd)
        except FileNotFoundError:
            return missing
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                return None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return os.read(fd, 4096)
        finally:
            os.close(fd)

    def last_reserved(self, index: int) -> IPAddr | None:
        data = self._read(f"{LAST_PREFIX}{index}")
        if not data:
            return None
        try:
            return ip_name(data.decode().strip())
        except UnicodeDecodeError:
            return None

    # Writing (caller holds the lock)

    def prepare(self, owner: Owner, count: int = 1) -> None:
        """Write `owner`'s content into `count` unnamed O_TMPFILEs, before taking the lock.

        Reserving then costs one link(2) under the lock; a crash leaves nothing behind (the
        files have no name until linked). The ones linked are fsync'd when the lock is released.
        Filesystems without O_TMPFILE use `reserve`'s fallback.
        """
        fds = self._prepared.setdefault(owner, [])
        data = owner.encode()
        while len(fds) < count:
            try:
                fd = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, FILE_MODE, dir_fd=self.fd)
            except OSError:
                return
            try:
                os.write(fd, data)
            except OSError:
                os.close(fd)
                return
            fds.append(fd)

    def reserve(self, name: str, owner: Owner) -> bool:
        """Create reservation `name` for `owner`; False if it already exists. Never overwrites."""
        fds = self._prepared.get(owner)
        if fds:
            try:
                os.link(f"/proc/self/fd/{fds[-1]}", name, dst_dir_fd=self.fd, follow_symlinks=True)
            except FileExistsError:
                return False
            except OSError as exc:
                log.debug("linking a prepared reservation failed (%s); using a named temporary", exc)
            else:
                self._dirty = True
                self._linked.append((fds.pop(), name, owner))  # one name per prepared file
                return True
        tmp = self._write_tmp(owner.encode())
        try:
            os.link(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)
        except FileExistsError:
            return False
        except OSError as exc:
            raise CNIError(IO_FAILURE, f"cannot reserve {name} in {self.path}", exc.strerror or "") from exc
        finally:
            self._unlink(tmp)
        return True

    def set_last_reserved(self, index: int, ip: str) -> None:
        """Record the round-robin hint `last_reserved_ip.<index>`, overwriting in place.

        Not fsync'd, not renamed (both cost a journal flush under the lock): a torn write only
        moves where the next search starts, and unreadable content is ignored.
        """
        name = f"{LAST_PREFIX}{index}"
        data = ip.encode()
        try:
            fd = os.open(
                name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=self.fd
            )
        except OSError as exc:
            raise CNIError(IO_FAILURE, f"cannot write {name} in {self.path}", exc.strerror or "") from exc
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    def release(self, name: str) -> None:
        self._unlink(name)

    def probe_writable(self) -> None:
        """Raise OSError unless a file can be created, synced and removed here."""
        self._unlink(self._write_tmp(b"probe"))

    def _write_tmp(self, data: bytes) -> str:
        name = f"{TMP_PREFIX}{os.getpid()}-{os.urandom(4).hex()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, FILE_MODE, dir_fd=self.fd)
        except OSError as exc:
            raise CNIError(
                IO_FAILURE, f"cannot write to allocation store {self.path}", exc.strerror or ""
            ) from exc
        try:
            os.write(fd, data)
            durable.fsync(fd)
        except OSError as exc:
            os.close(fd)
            self._unlink(name)
            raise CNIError(
                IO_FAILURE, f"cannot write to allocation store {self.path}", exc.strerror or ""
            ) from exc
        os.close(fd)
        return name

    def _unlink(self, name: str) -> None:
        self._dirty = True
        with suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)
