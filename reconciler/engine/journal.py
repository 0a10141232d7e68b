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

    def pending(self) -> list[Intent]:
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if name.endswith(".json") and not name.startswith("."):
                data = read_json(self.dir / name, None)
                if isinstance(data, dict) and "key" in data:
                    out.append(Intent.from_json(data))
        return out
