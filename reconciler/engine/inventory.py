"""What the reconciler owns: one record per applied attachment, and the namespaces it created.

Layout under `<state>/reconciler/`:
- `attachments/<network>-<id>-<ifname>.json`: the last-applied record of an attachment;
- `namespaces.json`: names of the namespaces we created (written *before* creating one);
- `status.json`: the last outcome of every attachment, backoff counters, the last pass summary.
Every write is a temp file + fsync + rename, so a kill leaves either the old or the new file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reconciler.errors import StateError
from reconciler.kernel import durable


def write_json(path: Path, data: Any, deferrable: bool = False, pretty: bool = True) -> None:
    """Atomically replace `path` with `data` as JSON, fsync'd before the rename (`deferrable`: unless
    a pass has deferred the fsyncs of this filesystem to its syncfs, see `kernel.durable`).

    `pretty=False` writes it on one line: json's C encoder, several times faster than the indented
    form (for the files written per attachment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1 if pretty else None, sort_keys=True)
    durable.replace_file(path, text.encode(), deferrable=deferrable)


def read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as err:
        raise StateError(f"{path}: unreadable state: {err}") from err


@dataclass
class Record:
    """The last-applied form of one attachment."""

    key: str
    network: str
    id: str
    ifname: str
    netns: str
    netns_path: str
    owns_netns: bool
    file: str
    network_file: str
    fingerprint: str
    ips: list[str] = field(default_factory=list)
    network_hash: str = ""
    applied_at: float = 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


class Inventory:
    """Reads and writes the reconciler's records in a state directory."""

    def __init__(self, state_dir: str | Path) -> None:
        self.state = Path(state_dir)
        self.root = self.state / "reconciler"
        self.attachments_dir = self.root / "attachments"
        self.namespaces_file = self.root / "namespaces.json"
        self.status_file = self.root / "status.json"

    def ensure(self) -> None:
        try:
            for sub in (self.attachments_dir, self.state / "results", self.state / "networks"):
                sub.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StateError(f"{self.state}: cannot create state directory: {err.strerror}") from err

    # attachments
    def _path(self, key: str) -> Path:
        return self.attachments_dir / (key.replace("/", "-") + ".json")

    def records(self) -> dict[str, Record]:
        out: dict[str, Record] = {}
        try:
            names = sorted(os.listdir(self.attachments_dir))
        except FileNotFoundError:
            return out
        for name in names:
            if name.startswith(".") or not name.endswith(".json"):
                continue
            data = read_json(self.attachments_dir / name, None)
            if isinstance(data, dict) and "key" in data:
                rec = Record.from_json(data)
                out[rec.key] = rec
        return out

    def put(self, record: Record) -> None:
        """Write a record (inside a pass its fsync waits for the pass's `sync`)."""
        write_json(self._path(record.key), asdict(record), deferrable=True, pretty=False)

    def sync(self) -> None:
        """Flush every write to the state directory's filesystem at once (syncfs): the end of a pass."""
        durable.syncfs(str(self.root))

    def drop(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    # namespaces
    def namespaces(self) -> set[str]:
        data = read_json(self.namespaces_file, [])
        return {str(n) for n in data} if isinstance(data, list) else set()

    def claim_namespace(self, name: str) -> None:
        self.claim_namespaces({name})

    def claim_namespaces(self, new: set[str]) -> None:
        names = self.namespaces()
        if not new <= names:
            write_json(self.namespaces_file, sorted(names | new))

    def release_namespace(self, name: str) -> None:
        self.release_namespaces({name})

    def release_namespaces(self, gone: set[str]) -> None:
        names = self.namespaces()
        if names & gone:
            write_json(self.namespaces_file, sorted(names - gone))

    # status
    def status(self) -> dict[str, Any]:
        data = read_json(self.status_file, {})
        if not isinstance(data, dict):
            data = {}
        data.setdefault("attachments", {})
        data.setdefault("last_pass", None)
        return data

    def save_status(self, status: dict[str, Any]) -> None:
        write_json(self.status_file, status)
