"""The tuning plugin's record of original values: `<dataDir>/<containerID>_<ifname>.json`.

Field names follow the reference (`mac`, `promisc`, `mtu`, `allmulti`,
`txQLen`) so either implementation can restore the other's backup; we add
`sysctl` (original values, keyed by /proc/sys path) and the attachment's
identity for GC. Files are written atomically, mode 0600.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = "/run/cni/tuning"


@dataclass
class Backup:
    """What ADD changed, with the values to put back."""

    mac: str | None = None
    promisc: bool | None = None
    mtu: int | None = None
    allmulti: bool | None = None
    txqlen: int | None = None
    sysctls: dict[str, str] = field(default_factory=dict)
    network: str = ""
    container_id: str = ""
    ifname: str = ""

    @classmethod
    def capture(cls, args: Any, current: Any, attrs: dict[str, Any], sysctls: dict[str, str | None]) -> Backup:
        """The current values of exactly what is about to change."""
        return cls(
            mac=current.mac if "mac" in attrs else None,
            promisc=current.promisc if "promisc" in attrs else None,
            mtu=current.mtu if "mtu" in attrs else None,
            allmulti=current.allmulti if "allmulti" in attrs else None,
            txqlen=current.txqlen if "txqlen" in attrs else None,
            sysctls={k: v for k, v in sysctls.items() if v is not None},
            network=args.network_name,
            container_id=args.container_id,
            ifname=args.ifname,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in (("mac", self.mac), ("promisc", self.promisc), ("mtu", self.mtu),
                           ("allmulti", self.allmulti), ("txQLen", self.txqlen)):
            if value is not None:
                out[key] = value
        if self.sysctls:
            out["sysctl"] = dict(self.sysctls)
        out.update(network=self.network, containerID=self.container_id, ifname=self.ifname)
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Backup:
        data = {str(k).lower(): v for k, v in raw.items()}  # the reference reads keys case-insensitively
        sysctls = data.get("sysctl") if isinstance(data.get("sysctl"), dict) else {}
        return cls(
            mac=data.get("mac") or None,
            promisc=data.get("promisc"),
            mtu=data.get("mtu") or None,
            allmulti=data.get("allmulti"),
            txqlen=data.get("txqlen"),
            sysctls={str(k): str(v) for k, v in sysctls.items() if _safe(str(k))},
            network=str(data.get("network") or ""),
            container_id=str(data.get("containerid") or ""),
            ifname=str(data.get("ifname") or ""),
        )

    def merged_over(self, older: Backup) -> Backup:
        """Keep the older (truly original) values; add what only this one records."""
        mine, theirs = self.to_json(), older.to_json()
        sysctls = {**self.sysctls, **older.sysctls}
        merged = Backup.from_json({**mine, **{k: v for k, v in theirs.items() if k != "sysctl"}})
        merged.sysctls = sysctls
        return merged


def _safe(path: str) -> bool:
    return path.startswith("net/") and ".." not in path.split("/")


def backup_path(data_dir: str, container_id: str, ifname: str) -> str:
    return os.path.join(data_dir, f"{container_id}_{ifname}.json")


def load(path: str) -> Backup | None:
    """The backup at `path`, or None when missing or unreadable (an unreadable one is logged)."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("tuning: ignoring unreadable backup %s: %s", path, exc)
        return None
    return Backup.from_json(data) if isinstance(data, dict) else None


def save(path: str, backup: Backup) -> bool:
    """Write `backup`, merged under an existing one (ADD twice keeps the originals); True if newly created."""
    existing = load(path)
    if existing is not None:
        backup = backup.merged_over(existing)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(backup.to_json(), fh)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return existing is None


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def list_backups(data_dir: str) -> Iterator[tuple[str, Backup]]:
    try:
        names = sorted(os.listdir(data_dir))
    except FileNotFoundError:
        return
    for name in names:
        if name.endswith(".json") and not name.startswith("."):
            path = os.path.join(data_dir, name)
            backup = load(path)
            if backup is not None:
                yield path, backup


def restore_quietly(backup: Backup, ifname: str, netns: str) -> None:
    """Put back link attributes and sysctls; each failure is logged, never raised (DEL is best effort)."""
    from reconciler.kernel import linkattrs, sysctl
    from reconciler.kernel.netns import KernelError, NetnsNotFound

    attrs = {k: v for k, v in (("mtu", backup.mtu), ("mac", backup.mac), ("promisc", backup.promisc),
                                 ("allmulti", backup.allmulti), ("txqlen", backup.txqlen)) if v is not None}
    try:
        if attrs:
            linkattrs.update(ifname, netns, **attrs)
    except NetnsNotFound:
        return
    except (KernelError, OSError) as exc:
        log.warning("tuning: could not restore link attributes of %s: %s", ifname, exc)
    for path, value in backup.sysctls.items():
        try:
            sysctl.write(path, value, netns)
        except NetnsNotFound:
            return
        except (OSError, ValueError) as exc:
            log.warning("tuning: could not restore sysctl %s: %s", path, exc)
