"""tap: a persistent tap device inside the container (for VMs run in the sandbox), optionally
enslaved to a bridge that already exists in the container, optionally configured from IPAM."""

from __future__ import annotations

import logging
import os
from typing import Any

from pydantic import field_validator

from reconciler.cni.args import CmdArgs
from reconciler.cni.model import CNIModel
from reconciler.cni.types import DNS, Result
from reconciler.cni.version import ALL_VERSIONS
from reconciler.errors import INTERNAL, UNSUPPORTED_FIELD, CNIError, config_error
from reconciler.kernel import devices, links
from reconciler.kernel.links import Link
from reconciler.kernel.snapshot import Snapshot
from reconciler.plugins import sandboxlink
from reconciler.plugins.iface import mac_from_args

log = logging.getLogger(__name__)
SUPPORTED_VERSIONS = ALL_VERSIONS
UINT32_MAX = 2**32 - 1


class TapConf(CNIModel):
    multi_queue: bool = False
    mtu: int = 0
    mac: str | None = None
    owner: int | None = None
    group: int | None = None
    selinux_context: str | None = None
    bridge: str | None = None
    ipam: dict[str, Any] | None = None
    dns: DNS | None = None

    @field_validator("owner", "group")
    @classmethod
    def _uint32(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= UINT32_MAX:
            raise ValueError(f"{v} is not a uint32")
        return v

    @field_validator("mtu")
    @classmethod
    def _mtu(cls, v: int) -> int:
        if v and not 68 <= v <= 65521:
            raise ValueError(f"invalid MTU {v} (must be 0 or between 68 and 65521)")
        return v


def _load(args: CmdArgs) -> tuple[TapConf, str | None]:
    """The config and the MAC to set: `mac` < CNI_ARGS MAC < args.cni.mac < runtimeConfig.mac."""
    conf = args.conf(TapConf)
    mac = mac_from_args(args)
    if mac is None and conf.mac:
        mac = conf.mac.lower()
        parts = mac.split(":")
        if len(parts) != 6 or not all(len(p) == 2 for p in parts):
            raise config_error("mac", f"invalid args {conf.mac} for MAC addr")
    return conf, mac


def _selinux(conf: TapConf) -> None:
    """Apply `selinuxContext` to the tap's creation, or refuse when SELinux is not usable here."""
    if not conf.selinux_context:
        return
    if not os.path.isdir("/sys/fs/selinux"):
        raise CNIError(UNSUPPORTED_FIELD, f"selinuxContext {conf.selinux_context!r} set but SELinux is not enabled")
    try:
        with open("/proc/thread-self/attr/sockcreate", "w") as fh:
            fh.write(conf.selinux_context)
    except OSError as exc:
        raise CNIError(INTERNAL, f"failed set socket label: {exc}") from exc


def add(args: CmdArgs) -> Result:
    conf, mac = _load(args)
    sandboxlink.require_netns(args)
    if conf.bridge:
        br = links.find(conf.bridge, args.netns)
        if br is None or br.kind != "bridge":
            raise CNIError(INTERNAL, f"bridge {conf.bridge!r} not found in the container (or not a bridge)")
    _selinux(conf)

    def create(tmp: str) -> Link:
        link = devices.create_tap(tmp, args.netns, multi_queue=conf.multi_queue, owner=conf.owner,
                                  group=conf.group)
        if conf.mtu:
            links.set_mtu(tmp, conf.mtu, args.netns)
        if mac:
            links.set_mac(tmp, mac, args.netns)
        if conf.bridge:
            links.set_master(tmp, conf.bridge, args.netns)
        return link

    return sandboxlink.standard_add(args, create, dns=conf.dns, what="tap", no_dad=True)


def delete(args: CmdArgs) -> None:
    args.conf(TapConf)
    sandboxlink.standard_del(args, "tap")


def check(args: CmdArgs) -> None:
    conf, _ = _load(args)

    def verify(snap: Snapshot, link: Link) -> None:
        if link.info.get("IFLA_TUN_TYPE") not in (None, 2):
            raise CNIError(INTERNAL, f"{args.ifname!r} is a tun device, expected tap")
        if conf.bridge:
            br = snap.link(conf.bridge)
            if br is None or link.master != br.index:
                raise CNIError(INTERNAL, f"tap {args.ifname!r} is not attached to bridge {conf.bridge!r}")
        if conf.owner is not None and link.info.get("IFLA_TUN_OWNER") != conf.owner:
            raise CNIError(INTERNAL, f"tap {args.ifname!r}: owner is {link.info.get('IFLA_TUN_OWNER')}, "
                                     f"expected {conf.owner}")
        if conf.group is not None and link.info.get("IFLA_TUN_GROUP") != conf.group:
            raise CNIError(INTERNAL, f"tap {args.ifname!r}: group is {link.info.get('IFLA_TUN_GROUP')}, "
                                     f"expected {conf.group}")

    sandboxlink.standard_check(args, "tun", "tap", verify)


def status(args: CmdArgs) -> None:
    args.conf(TapConf)
    sandboxlink.forward_status(args)


def gc(args: CmdArgs) -> None:
    args.conf(TapConf)
    sandboxlink.forward_gc(args)
