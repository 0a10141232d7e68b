"""What the reconciler owns: one record per applied attachment, and the namespaces it created.

Layout under `<state>/reconciler/`:
- `attachments.json`: the last-applied record of every attachment, keyed by `network/id/ifname`
  (one file, rewritten once per pass: a file per record cost a new inode per ADD, ~1 ms each on a
  journal-less ext4, see bench/README.md; `attachments/*.json` of older versions is read and
  folded into it on the next save);
- `namespaces.json`: names of the namespaces we created (written *before* creating one);
- `status.json`: the last outcome of every attachment, backoff counters, the last pass summary.
Every write is a temp file + fsync + rename, so a kill leaves either the old or the new file.

`put` and `drop` stage a change; `records()` shows the saved records with the staged changes on
top; `save()` writes them. A pass saves once, before the syncfs that precedes dropping its
journal batch, so a crash before that undoes the pass's steps from the journal as before.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
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
        self.records_file = self.root / "attachments.json"
        self.legacy_dir = self.root / "attachments"  # one file per record, before attachments.json
        self.namespaces_file = self.root / "namespaces.json"
        self.status_file = self.root / "status.json"
        self._staged: dict[str, Record | None] = {}

    def ensure(self) -> None:
        try:
            for sub in (self.root, self.state / "results", self.state / "networks"):
                sub.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StateError(f"{self.state}: cannot create state directory: {err.strerror}") from err

    # attachments
    def records(self) -> dict[str, Record]:
        """The saved records with this process's staged `put`s and `drop`s applied."""
        out = self._saved()
        for key, rec in self._staged.items():
            if rec is None:
                out.pop(key, None)
            else:
                out[key] = rec
        return out

    def _saved(self) -> dict[str, Record]:
        data = read_json(self.records_file, {"attachments": {}})
        items = data.get("attachments") if isinstance(data, dict) else None
        if not isinstance(items, dict):
            raise StateError(f"{self.records_file}: unreadable state: no 'attachments' object")
        out: dict[str, Record] = {}
        for key, item in items.items():
            if isinstance(item, dict):
                out[key] = Record.from_json({**item, "key": key})  # the key is the entry's name
        for name in self._legacy_names():
            data = read_json(self.legacy_dir / name, None)
            if isinstance(data, dict) and "key" in data:
                out.setdefault(data["key"], Record.from_json(data))
        return out

    def _legacy_names(self) -> list[str]:
        try:
            names = os.listdir(self.legacy_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.endswith(".json") and not n.startswith("."))

    def put(self, record: Record) -> None:
        """Stage a record (written by the next `save`)."""
        self._staged[record.key] = record

    def drop(self, key: str) -> None:
        """Stage a record's removal (written by the next `save`)."""
        self._staged[key] = None

    def save(self) -> None:
        """Write the staged changes in one file (inside a pass its fsync waits for the pass's `sync`)
        and fold in the records of the older one-file-per-record layout."""
        legacy = self._legacy_names()
        if not self._staged and not legacy:
            return
        records = self.records()
        data = {"attachments": {key: dict(vars(rec)) for key, rec in sorted(records.items())}}  # flat: no asdict deep copy
        # folding in old files is fsync'd at once: their unlinks must never reach the disk alone
        write_json(self.records_file, data, deferrable=not legacy, pretty=False)
        self._staged = {}
        for name in legacy:
            (self.legacy_dir / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.legacy_dir.rmdir()

    def discard(self) -> None:
        """Forget the staged changes (a pass that did not finish: its journal batch undoes them)."""
        self._staged = {}

    def sync(self) -> None:
        """Flush every write to the state directory's filesystem at once (syncfs): the end of a pass."""
        durable.syncfs(str(self.root))

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
