"""macvlan: a macvlan sub-interface of a host (or container) master, moved into the container as CNI_IFNAME."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from pydantic import field_validator

from reconciler.cni.args import CmdArgs
from reconciler.cni.invoke import delegate
from reconciler.cni.model import CNIModel
from reconciler.cni.types import DNS, Result
from reconciler.cni.version import ALL_VERSIONS
from reconciler.errors import INTERNAL, INVALID_NETWORK_CONFIG, UNSUPPORTED_FIELD, CNIError
from reconciler.kernel import links, routes
from reconciler.kernel import netns as nsmod
from reconciler.kernel.snapshot import snapshot
from reconciler.plugins import hostveth, sandboxlink
from reconciler.plugins.iface import (
    check_interface_ips,
    check_link,
    check_routes,
    find_sandbox_iface,
    is_layer3,
    kernel_errors,
    mac_from_args,
    prev_result,
    undo_quietly,
)

log = logging.getLogger(__name__)
SUPPORTED_VERSIONS = ALL_VERSIONS
MODES = ("bridge", "private", "vepa", "passthru")


class MacvlanConf(CNIModel):
    master: str = ""
    mode: str = "bridge"
    mtu: int = 0
    mac: str | None = None
    link_in_container: bool = False
    bcqueuelen: int | None = None
    ipam: dict[str, Any] | None = None
    dns: DNS | None = None

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        v = v or "bridge"
        if v not in MODES:
            raise ValueError(f"unknown macvlan mode: {v!r} (one of {', '.join(MODES)})")
        return v

    @field_validator("mtu")
    @classmethod
    def _mtu(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"invalid MTU {v}, must be >= 0")
        return v


def _master_ns(conf: MacvlanConf, args: CmdArgs) -> str | None:
    return args.netns if conf.link_in_container else args.host_netns


def _master(conf: MacvlanConf, args: CmdArgs) -> links.Link:
    """The master link: configured, or the interface of the first default route."""
    where = _master_ns(conf, args)
    name = conf.master
    if not name:
        name = routes.default_route_ifname(where) or routes.default_route_ifname(where, family=6) or ""
        if not name:
            raise CNIError(INVALID_NETWORK_CONFIG, "invalid network config: master: not set and no default route "
                           "to take it from")
    link = links.find(name, where)
    if link is None:
        raise CNIError(INVALID_NETWORK_CONFIG, f"invalid network config: master: failed to lookup master {name!r}")
    return link


def _mac(conf: MacvlanConf, args: CmdArgs) -> str | None:
    return mac_from_args(args) or (conf.mac.lower() if conf.mac else None)


def add(args: CmdArgs) -> Result:
    conf = args.conf(MacvlanConf)
    if conf.bcqueuelen:
        raise CNIError(UNSUPPORTED_FIELD, "bcqueuelen is not supported by this build", str(conf.bcqueuelen))
    layer3 = is_layer3(args)
    with nsmod.session(), contextlib.ExitStack() as undo, kernel_errors("macvlan"):
        master = _master(conf, args)
        if conf.mtu and conf.mtu > master.mtu:
            raise CNIError(INVALID_NETWORK_CONFIG,
                           f"invalid network config: mtu: invalid MTU {conf.mtu}, must be [0, master MTU({master.mtu})]")
        if links.find(args.ifname, args.netns) is not None:
            raise CNIError(INTERNAL, f"interface {args.ifname!r} already exists in {args.netns}")
        tmp = hostveth.random_name()
        links.create_macvlan(tmp, master.name, conf.mode, netns=_master_ns(conf, args), target_netns=args.netns,
                             mtu=conf.mtu or None, mac=_mac(conf, args))
        undo.callback(undo_quietly(links.delete, tmp, args.netns))
        links.rename(tmp, args.ifname, args.netns)
        undo.callback(undo_quietly(links.delete, args.ifname, args.netns))
        cont = links.get(args.ifname, args.netns)
        result = sandboxlink.run_ipam(args, undo) if layer3 else Result()
        result = sandboxlink.configure(args, result, cont, dns=conf.dns)  # addresses announced, as the reference
        undo.pop_all()
    return result


def delete(args: CmdArgs) -> None:
    """Release the IPAM and delete the link. The config is not validated: the reference checks
    `mode` on ADD only, and a config that became invalid must not block cleanup."""
    ipam = sandboxlink.ipam_type(args.config)
    if ipam:
        delegate("DEL", ipam, args)
    if not args.netns:
        return
    with nsmod.session(), kernel_errors("macvlan"):
        hostveth.delete_container_link(args.ifname, args.netns)


def check(args: CmdArgs) -> None:
    conf = args.conf(MacvlanConf)
    if is_layer3(args):
        delegate("CHECK", str(conf.ipam["type"]), args)  # type: ignore[index]
    prev = prev_result(args)
    assert prev is not None
    with nsmod.session(), kernel_errors("macvlan"):
        _master(conf, args)
        snap = snapshot(args.netns)
        idx = find_sandbox_iface(prev, args.ifname, args.netns)
        link = check_link(snap, prev.interfaces[idx], kind="macvlan")
        if link.macvlan_mode != conf.mode:
            raise CNIError(INTERNAL, f"{args.ifname!r}: macvlan mode is {link.macvlan_mode!r}, expected {conf.mode!r}")
        check_interface_ips(snap, args.ifname, prev)
        check_routes(snap, args.ifname, prev)


def status(args: CmdArgs) -> None:
    conf = args.conf(MacvlanConf)
    if is_layer3(args):
        delegate("STATUS", str(conf.ipam["type"]), args)  # type: ignore[index]


def gc(args: CmdArgs) -> None:
    conf = args.conf(MacvlanConf)
    if is_layer3(args):
        delegate("GC", str(conf.ipam["type"]), args)  # type: ignore[index]
