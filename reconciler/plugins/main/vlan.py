"""vlan: an 802.1q link with `vlanId` on `master` (on the host, or inside the container with
`linkInContainer`), moved into the container as CNI_IFNAME and configured from IPAM."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from reconciler.cni.args import CmdArgs
from reconciler.cni.model import CNIModel
from reconciler.cni.types import DNS, Result
from reconciler.cni.version import ALL_VERSIONS
from reconciler.errors import INTERNAL, INVALID_NETWORK_CONFIG, CNIError
from reconciler.kernel import links
from reconciler.kernel.links import Link
from reconciler.kernel.snapshot import Snapshot
from reconciler.plugins import sandboxlink

SUPPORTED_VERSIONS = ALL_VERSIONS


class VlanConf(CNIModel):
    master: str = ""
    vlan_id: int = 0
    mtu: int = 0
    link_in_container: bool = False
    ipam: dict[str, Any] | None = None
    dns: DNS | None = None

    @field_validator("vlan_id")
    @classmethod
    def _vlan_id(cls, v: int) -> int:
        if not 0 <= v <= 4094:
            raise ValueError(f"invalid VLAN ID {v} (must be between 0 and 4094 inclusive)")
        return v


def _load(args: CmdArgs) -> VlanConf:
    conf = args.conf(VlanConf)
    if not conf.master:
        raise CNIError(INVALID_NETWORK_CONFIG,
                       '"master" field is required. It specifies the host interface name to create the VLAN for.')
    return conf


def _master_ns(args: CmdArgs, conf: VlanConf) -> str | None:
    return args.netns if conf.link_in_container else args.host_netns


def add(args: CmdArgs) -> Result:
    conf = _load(args)
    if not sandboxlink.ipam_type(args.config):
        raise CNIError(INVALID_NETWORK_CONFIG, "vlan interface requires an IPAM configuration (ipam.type)")
    sandboxlink.require_netns(args)
    master_ns = _master_ns(args, conf)
    sandboxlink.master_mtu(conf.master, master_ns, conf.mtu)

    def create(tmp: str) -> Link:
        return links.create_vlan(tmp, conf.master, conf.vlan_id, netns=master_ns, target_netns=args.netns,
                                 mtu=conf.mtu or None)

    return sandboxlink.standard_add(args, create, dns=conf.dns, what="vlan", notify=False)


def delete(args: CmdArgs) -> None:
    _load(args)
    sandboxlink.standard_del(args, "vlan")


def check(args: CmdArgs) -> None:
    conf = _load(args)
    master_ns = _master_ns(args, conf)

    def verify(snap: Snapshot, link: Link) -> None:
        if links.find(conf.master, master_ns) is None:
            raise CNIError(INTERNAL, f"master {conf.master!r} not found")
        vid = link.info.get("IFLA_VLAN_ID")
        if vid != conf.vlan_id:
            raise CNIError(INTERNAL, f"vlan {args.ifname!r}: VLAN id is {vid}, expected {conf.vlan_id}")
        if conf.mtu and link.mtu != conf.mtu:
            raise CNIError(INTERNAL, f"vlan {args.ifname!r}: MTU is {link.mtu}, expected {conf.mtu}")

    sandboxlink.standard_check(args, "vlan", "vlan", verify)


def status(args: CmdArgs) -> None:
    _load(args)
    sandboxlink.forward_status(args)


def gc(args: CmdArgs) -> None:
    _load(args)
    sandboxlink.forward_gc(args)
