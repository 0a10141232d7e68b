"""The daemon's state on disk: one record per lease, and the queue of releases.

Layout under the state directory (``<socket path>.d`` unless told otherwise):
``leases/<id>.json`` holds what is needed to resume a lease after a restart;
``releases/<id>.json`` is written by a DEL that found no daemon and is
consumed by the daemon when it next runs. ``<id>`` is a hash of the client
identifier. Files are written atomically (temp file + rename), mode 0600.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def state_dir_for(socket_path: str) -> Path:
    """The default state directory of the daemon listening on `socket_path`."""
    return Path(f"{socket_path}.d")


def record_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _write(path: Path, data: dict[str, Any]) -> None:
    if not path.parent.is_dir():
        path.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_dir(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("dhcp: ignoring unreadable state file %s: %s", path, exc)
            continue
        if isinstance(data, dict) and isinstance(data.get("key"), str):
            out.append((path, data))
    return out


class LeaseStore:
    """Lease records and queued releases under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.leases = self.root / "leases"
        self.releases = self.root / "releases"

    def save(self, record: dict[str, Any]) -> None:
        _write(self.leases / f"{record_id(record['key'])}.json", record)

    def forget(self, key: str) -> None:
        (self.leases / f"{record_id(key)}.json").unlink(missing_ok=True)

    def load_all(self) -> list[dict[str, Any]]:
        return [data for _, data in _read_dir(self.leases)]

    def queue_release(self, request: dict[str, Any]) -> Path:
        path = self.releases / f"{record_id(request['key'])}.json"
        _write(path, request)
        return path

    def pending_releases(self) -> list[tuple[Path, dict[str, Any]]]:
        return _read_dir(self.releases)
