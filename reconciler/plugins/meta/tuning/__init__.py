"""tuning: sysctls and link attributes of the container interface, restored on DEL.

Inputs, weakest first: the config (`sysctl`, `mac`, `mtu`, `promisc`,
`allmulti`, `txQLen`), CNI_ARGS `MAC`, the `mac` capability, then
`args.cni.*` (args win, as in the reference).

Sysctl keys must be `net.*` (they are namespaced, so only the container is
touched), may not contain `/` or `..`, and the first `IFNAME` component is
replaced by CNI_IFNAME (kept as one path component, so `eth0.100` works).
With `/etc/cni/tuning/allowlist.conf` present each key must match one of its
regular expressions. Every key is checked before anything is written.

ADD records the original values in `<dataDir>/<containerID>_<ifname>.json`
(the reference's file and field names, plus the sysctls, which the reference
does not restore) before changing anything; DEL restores link attributes
and sysctls from it and deletes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any

from pydantic import Field, field_validator

from reconciler.cni.args import CmdArgs
from reconciler.cni.types import NetConf, Result
from reconciler.cni.version import parse_result
from reconciler.errors import INTERNAL, INVALID_NETWORK_CONFIG, CNIError, config_error
from reconciler.plugins.meta.tuning import backup as state

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
ALLOWLIST = "/etc/cni/tuning/allowlist.conf"
MAC_RE = re.compile(r"^([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}$")


class TuningConf(NetConf):
    sysctl: dict[str, str | int] | None = None
    mac: str | None = None
    promisc: bool = False
    mtu: int | None = None
    allmulti: bool | None = None
    tx_q_len: int | None = Field(default=None, alias="txQLen")
    data_dir: str = state.DEFAULT_DATA_DIR

    @field_validator("mtu")
    @classmethod
    def _mtu(cls, v: int | None) -> int | None:
        if v is not None and v < 0:
            raise ValueError(f"must be a positive integer, got {v}")
        return v or None

    @field_validator("tx_q_len")
    @classmethod
    def _txqlen(cls, v: int | None) -> int | None:
        if v is not None and v < 0:
            raise ValueError(f"must be a non-negative integer, got {v}")
        return v


class Wanted:
    """The effective request after every source is merged and validated."""

    def __init__(self) -> None:
        self.sysctls: dict[str, str] = {}  # slash path under /proc/sys -> value
        self.mac: str | None = None
        self.promisc = False
        self.mtu: int | None = None
        self.allmulti: bool | None = None
        self.txqlen: int | None = None

    def link_attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.mac is not None:
            out["mac"] = self.mac
        if self.promisc:
            out["promisc"] = True
        if self.mtu is not None:
            out["mtu"] = self.mtu
        if self.allmulti is not None:
            out["allmulti"] = self.allmulti
        if self.txqlen is not None:
            out["txqlen"] = self.txqlen
        return out


def _mac(value: Any, field: str) -> str:
    if not isinstance(value, str) or not MAC_RE.match(value):
        raise config_error(field, f"invalid MAC address {value!r}")
    mac = value.lower().replace("-", ":")
    if int(mac[:2], 16) & 1:
        raise config_error(field, f"{value} is a multicast address")
    return mac


def sysctl_path(key: str, ifname: str) -> str:
    """`net.ipv4.conf.IFNAME.arp_filter` -> `net/ipv4/conf/<ifname>/arp_filter`; CNIError(7) if not allowed."""
    field = f"sysctl.{key}"
    if "/" in key or ".." in key:
        raise config_error(field, "sysctl keys may not contain '/' or '..'")
    parts = key.split(".")
    if parts[0] != "net" or len(parts) < 3 or any(not p for p in parts):
        raise config_error(field, "only net.* sysctls (namespaced to the container) may be set")
    if "IFNAME" in parts:
        parts[parts.index("IFNAME")] = ifname
    return "/".join(parts)


def _allowlist() -> list[re.Pattern[str]] | None:
    path = os.environ.get("RECONCILER_TUNING_ALLOWLIST", ALLOWLIST)
    try:
        with open(path) as fh:
            lines = [ln.strip() for ln in fh]
    except FileNotFoundError:
        return None
    try:
        return [re.compile(ln) for ln in lines if ln and not ln.startswith("#")]
    except re.error as exc:
        raise CNIError(INVALID_NETWORK_CONFIG, f"invalid regular expression in {path}", str(exc)) from exc


def wanted(conf: TuningConf, args: CmdArgs) -> Wanted:
    """Merge config, CNI_ARGS, runtimeConfig and args.cni; validate every value before any is used."""
    w = Wanted()
    sysctl: dict[str, Any] = dict(conf.sysctl or {})
    mac: tuple[Any, str] | None = (conf.mac, "mac") if conf.mac else None
    w.promisc, w.mtu, w.allmulti, w.txqlen = conf.promisc, conf.mtu, conf.allmulti, conf.tx_q_len
    env_mac = args.known_args("tuning", "MAC").get("MAC")
    if env_mac:
        mac = (env_mac, "CNI_ARGS.MAC")
    rc_mac = args.runtime_config().get("mac")
    if rc_mac:
        mac = (rc_mac, "runtimeConfig.mac")
    cni = ((conf.args or {}).get("cni") or {}) if isinstance(conf.args, dict) else {}
    if isinstance(cni, dict) and cni:
        sysctl, mac = _merge_args(cni, sysctl, mac, w)
    if mac is not None:
        w.mac = _mac(*mac)
    patterns = _allowlist()
    for key, value in sysctl.items():
        if not isinstance(key, str):
            raise config_error("sysctl", "keys must be strings")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise config_error(f"sysctl.{key}", f"value must be a string, got {value!r}")
        path = sysctl_path(key, args.ifname)
        if patterns is not None and not any(p.search(key) for p in patterns):
            raise config_error(f"sysctl.{key}", "not allowed by the tuning allowlist")
        if path in w.sysctls:
            raise config_error(f"sysctl.{key}", "duplicate sysctl key")
        w.sysctls[path] = str(value)
    return w


def _merge_args(cni: dict[str, Any], sysctl: dict[str, Any], mac: tuple[Any, str] | None,
                w: Wanted) -> tuple[dict[str, Any], tuple[Any, str] | None]:
    lower = {str(k).lower(): v for k, v in cni.items()}
    if lower.get("mac"):
        mac = (lower["mac"], "args.cni.mac")
    if "promisc" in lower:
        w.promisc = _typed(lower["promisc"], bool, "args.cni.promisc")
    if lower.get("mtu") is not None:
        w.mtu = _typed(lower["mtu"], int, "args.cni.mtu")
        if w.mtu <= 0:
            raise config_error("args.cni.mtu", f"must be a positive integer, got {w.mtu}")
    if lower.get("allmulti") is not None:
        w.allmulti = _typed(lower["allmulti"], bool, "args.cni.allmulti")
    if lower.get("txqlen") is not None:
        w.txqlen = _typed(lower["txqlen"], int, "args.cni.txQLen")
        if w.txqlen < 0:
            raise config_error("args.cni.txQLen", f"must be a non-negative integer, got {w.txqlen}")
    if isinstance(lower.get("sysctl"), dict) and lower["sysctl"]:
        sysctl = dict(lower["sysctl"])
    elif lower.get("sysctl") not in (None, {}):
        raise config_error("args.cni.sysctl", "must be an object")
    return sysctl, mac


def _typed(value: Any, kind: type, field: str) -> Any:
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise config_error(field, f"must be an integer, got {value!r}")
    if kind is bool and not isinstance(value, bool):
        raise config_error(field, f"must be a boolean, got {value!r}")
    return value


def _prev(conf: TuningConf) -> Result:
    if conf.prev_result is None:
        raise config_error("prevResult", "tuning must be called as a chained plugin")
    return parse_result(conf.prev_result, conf.cni_version)


def add(args: CmdArgs) -> Result:
    """Back up, then write sysctls and link attributes inside the container's netns."""
    from reconciler.kernel import linkattrs, sysctl
    from reconciler.kernel.netns import KernelError

    conf = args.conf(TuningConf)
    w = wanted(conf, args)
    result = _prev(conf)
    attrs = w.link_attrs()
    if not w.sysctls and not attrs:
        return result
    try:
        current = linkattrs.read(args.ifname, args.netns)
        old_sysctls = sysctl.read_many(list(w.sysctls), args.netns)
    except KernelError as exc:
        raise CNIError(INTERNAL, f"tuning: cannot read {args.ifname} in {args.netns}", str(exc)) from exc
    missing = [p for p, v in old_sysctls.items() if v is None]
    if missing:
        raise config_error("sysctl", f"no such sysctl in the container: {', '.join(k.replace('/', '.') for k in missing)}")
    backup = state.Backup.capture(args, current, attrs, old_sysctls)
    path = state.backup_path(conf.data_dir, args.container_id, args.ifname)
    with contextlib.ExitStack() as undo:
        try:
            created = state.save(path, backup)
            if created:
                undo.callback(state.remove, path)
            undo.callback(state.restore_quietly, backup, args.ifname, args.netns)
            if w.sysctls:
                sysctl.write_many(w.sysctls, args.netns)
            if attrs:
                linkattrs.update(args.ifname, args.netns, **attrs)
        except (KernelError, OSError) as exc:
            raise CNIError(INTERNAL, f"tuning: failed to apply settings to {args.ifname}", str(exc)) from exc
        undo.pop_all()
    if w.mac is not None:
        for iface in result.interfaces:
            if iface.name == args.ifname and iface.sandbox == args.netns:
                iface.mac = w.mac
    return result


def delete(args: CmdArgs) -> None:
    """Restore what ADD changed from the backup, then delete the backup (missing backup/netns: done)."""
    data_dir = str(args.config.get("dataDir") or state.DEFAULT_DATA_DIR)
    path = state.backup_path(data_dir, args.container_id, args.ifname)
    backup = state.load(path)
    if backup is None:
        return
    if args.netns:
        state.restore_quietly(backup, args.ifname, args.netns)
    state.remove(path)


def check(args: CmdArgs) -> None:
    """Every requested sysctl and link attribute still has the requested value."""
    from reconciler.kernel import linkattrs, sysctl
    from reconciler.kernel.netns import KernelError

    conf = args.conf(TuningConf)
    w = wanted(conf, args)
    _prev(conf)
    try:
        values = sysctl.read_many(list(w.sysctls), args.netns) if w.sysctls else {}
        have = linkattrs.read(args.ifname, args.netns)
    except KernelError as exc:
        raise CNIError(INTERNAL, f"tuning: cannot read {args.ifname} in {args.netns}", str(exc)) from exc
    for path, value in w.sysctls.items():
        if (values.get(path) or "").split() != value.split():
            raise CNIError(INTERNAL, f"tuning: sysctl {path.replace('/', '.')} is {values.get(path)!r}, want {value!r}")
    checks = {
        "mac": (w.mac, have.mac),
        "mtu": (w.mtu, have.mtu),
        "promisc": (True if w.promisc else None, have.promisc),
        "allmulti": (w.allmulti, have.allmulti),
        "txQLen": (w.txqlen, have.txqlen),
    }
    for name, (want, actual) in checks.items():
        if want is not None and want != actual:
            raise CNIError(INTERNAL, f"tuning: {name} of {args.ifname} is {actual}, want {want}")


def gc(args: CmdArgs) -> None:
    """Delete this network's backups of attachments not in `cni.dev/valid-attachments`."""
    data_dir = str(args.config.get("dataDir") or state.DEFAULT_DATA_DIR)
    valid = args.config.get("cni.dev/valid-attachments") or args.config.get("cni.dev/attachments") or []
    keep = {(str(a.get("containerID")), str(a.get("ifname"))) for a in valid if isinstance(a, dict)}
    for path, backup in state.list_backups(data_dir):
        if backup.network == args.network_name and (backup.container_id, backup.ifname) not in keep:
            state.remove(path)

