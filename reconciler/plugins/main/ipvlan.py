"""ipvlan: an ipvlan link on a host master (or a master inside the container), modes l2/l3/l3s.

Without IPAM, ipvlan can be chained after another plugin: the prevResult's IPs are put on the
new link and, when `master` is not given, the prevResult's single interface is the master.
"""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from reconciler.cni.args import CmdArgs
from reconciler.cni.model import CNIModel
from reconciler.cni.types import DNS, Result
from reconciler.cni.version import ALL_VERSIONS, parse_result
from reconciler.errors import INTERNAL, INVALID_NETWORK_CONFIG, CNIError
from reconciler.kernel import links, routes
from reconciler.kernel.links import Link
from reconciler.kernel.snapshot import Snapshot
from reconciler.plugins import sandboxlink

SUPPORTED_VERSIONS = ALL_VERSIONS
MODES = {"l2": 0, "l3": 1, "l3s": 2}


class IpvlanConf(CNIModel):
    master: str = ""
    mode: str = "l2"
    mtu: int = 0
    link_in_container: bool = False
    ipam: dict[str, Any] | None = None
    dns: DNS | None = None

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v: Any) -> str:
        mode = "l2" if v in (None, "") else str(v)
        if mode not in MODES:
            raise ValueError(f"unknown ipvlan mode: {mode!r} (l2, l3 or l3s)")
        return mode

    @field_validator("mtu")
    @classmethod
    def _mtu(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"invalid MTU {v}")
        return v


def _prior(args: CmdArgs) -> Result | None:
    raw = args.config.get("prevResult")
    return parse_result(raw, args.cni_version) if raw else None


def _load(args: CmdArgs) -> tuple[IpvlanConf, Result | None]:
    """The config, with `master` resolved (explicit, chained from prevResult, or the default route's link)."""
    conf = args.conf(IpvlanConf)
    prior = _prior(args)
    if not conf.master:
        if prior is not None:
            named = [i for i in prior.interfaces if i.name]
            if len(prior.interfaces) != 1 or len(named) != 1:
                raise CNIError(INVALID_NETWORK_CONFIG,
                               "chained master failure: prevResult lacks a single named interface")
            conf.master = named[0].name
        else:
            where = args.netns if conf.link_in_container else args.host_netns
            master = routes.default_route_ifname(where)
            if master is None:
                raise CNIError(INVALID_NETWORK_CONFIG,
                               '"master" field is required and no default route interface was found')
            conf.master = master
    return conf, prior


def _master_ns(args: CmdArgs, conf: IpvlanConf) -> str | None:
    return args.netns if conf.link_in_container else args.host_netns


def add(args: CmdArgs) -> Result:
    conf, prior = _load(args)
    layer3 = bool(sandboxlink.ipam_type(args.config))
    if not layer3 and (prior is None or not prior.ips):
        raise CNIError(INVALID_NETWORK_CONFIG, "ipvlan interface requires an IPAM configuration")
    sandboxlink.require_netns(args)
    master_ns = _master_ns(args, conf)
    sandboxlink.master_mtu(conf.master, master_ns, conf.mtu)

    def create(tmp: str) -> Link:
        return links.create_ipvlan(tmp, conf.master, conf.mode, netns=master_ns, target_netns=args.netns,
                                   mtu=conf.mtu or None)

    return sandboxlink.standard_add(args, create, dns=conf.dns, prior=None if layer3 else prior,
                                    what="ipvlan")


def delete(args: CmdArgs) -> None:
    args.conf(IpvlanConf)
    sandboxlink.standard_del(args, "ipvlan")


def check(args: CmdArgs) -> None:
    conf = args.conf(IpvlanConf)  # prevResult is our own result here: master is explicit or the default
    master_ns = _master_ns(args, conf)
    master_name = conf.master or routes.default_route_ifname(master_ns)

    def verify(snap: Snapshot, link: Link) -> None:
        if master_name and links.find(master_name, master_ns) is None:
            raise CNIError(INTERNAL, f"master {master_name!r} not found")
        mode = link.info.get("IFLA_IPVLAN_MODE")
        if mode != MODES[conf.mode]:
            found = next((k for k, v in MODES.items() if v == mode), str(mode))
            raise CNIError(INTERNAL, f"ipvlan {args.ifname!r}: mode is {found}, expected {conf.mode}")

    sandboxlink.standard_check(args, "ipvlan", "ipvlan", verify)


def status(args: CmdArgs) -> None:
    args.conf(IpvlanConf)
    sandboxlink.forward_status(args)


def gc(args: CmdArgs) -> None:
    args.conf(IpvlanConf)
    sandboxlink.forward_gc(args)
