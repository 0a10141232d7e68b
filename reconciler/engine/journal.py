"""The intent journal: written before an attachment's steps, cleared after them.

An entry lives at `<state>/reconciler/journal/<network>-<id>-<ifname>.json` and
holds what is about to happen (`action`), the phase reached, and everything
needed to undo it without the specs: the config bytes the ADD uses (base64),
the runtime conf, and the namespace we may be creating. `recover` runs at the
start of every `apply`/`watch` pass, before planning: it finishes an
interrupted DEL and undoes an interrupted ADD (DEL with the journaled config,
drop the record, delete a namespace we created for it), so the plan that
follows sees a clean "missing" attachment and adds it again.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reconciler.engine.inventory import read_json, write_json

log = logging.getLogger(__name__)


@dataclass
class Intent:
    key: str
    action: str  # add | delete | replace | repair
    phase: str = "start"  # start -> deleted (replace/repair) -> added
    network: str = ""
    container_id: str = ""
    ifname: str = ""
    netns: str = ""
    netns_name: str = ""  # a namespace we create for this attachment ("" if none)
    config_b64: str = ""  # the config list the ADD runs with
    cni_args: list[list[str]] = field(default_factory=list)
    capability_args: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    pid: int = field(default_factory=os.getpid)

    @property
    def config(self) -> bytes:
        return base64.b64decode(self.config_b64) if self.config_b64 else b""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Intent:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class Journal:
    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir) / "reconciler" / "journal"

    def _path(self, key: str) -> Path:
        return self.dir / (key.replace("/", "-") + ".json")

    def begin(self, intent: Intent) -> None:
        write_json(self._path(intent.key), asdict(intent))

    def advance(self, intent: Intent, phase: str) -> None:
        intent.phase = phase
        write_json(self._path(intent.key), asdict(intent))

    def clear(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def begin_batch(self, intents: list[Intent]) -> Path | None:
        """Journal many intents with one write (one fsync): `batch-<pid>-<n>.json` holds them all.

        Recovery treats each as if it had its own entry; `clear_batch` drops the file once every
        step of the batch is done (their own entries, if any, are cleared as usual).
        """
        if not intents:
            return None
        path = self.dir / f"batch-{os.getpid()}-{time.monotonic_ns()}.json"
        write_json(path, {"batch": [dict(vars(i)) for i in intents]}, pretty=False)  # flat: asdict deep-copies (~30 us each)
        return path

    def forget(self, keys: Iterable[str]) -> None:
        """Clear each key's own entry and take the keys out of every batch file, each rewritten at
        most once (recovery)."""
        gone = set(keys)
        for key in gone:
            self.clear(key)
        if not gone:
            return
        try:
            names = sorted(n for n in os.listdir(self.dir) if n.startswith("batch-") and n.endswith(".json"))
        except FileNotFoundError:
            return
        for name in names:
            data = read_json(self.dir / name, None)
            items = data.get("batch") if isinstance(data, dict) else None
            if not isinstance(items, list):
                continue
            rest = [i for i in items if not (isinstance(i, dict) and str(i.get("key")) in gone)]
            if not rest:
                (self.dir / name).unlink(missing_ok=True)
            elif len(rest) != len(items):
                write_json(self.dir / name, {"batch": rest})

    def clear_batch(self, path: Path | None) -> None:
        if path is not None:
            path.unlink(missing_ok=True)

    def pending(self) -> list[Intent]:
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        out: dict[str, Intent] = {}
        for name in names:
            if name.endswith(".json") and not name.startswith("."):
                data = read_json(self.dir / name, None)
                if isinstance(data, dict) and "key" in data:
                    out[data["key"]] = Intent.from_json(data)
                elif isinstance(data, dict) and isinstance(data.get("batch"), list):
                    for item in data["batch"]:
                        if isinstance(item, dict) and "key" in item:
                            out.setdefault(item["key"], Intent.from_json(item))
        return list(out.values())
