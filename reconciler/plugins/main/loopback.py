"""loopback: bring `lo` up inside the container (CNI_IFNAME is ignored, as the reference does)."""

from __future__ import annotations

from reconciler.cni.args import CmdArgs
from reconciler.cni.types import Interface, IPConfig, Result
from reconciler.cni.version import ALL_VERSIONS, parse_result
from reconciler.errors import INTERNAL, CNIError
from reconciler.kernel import addrs, links
from reconciler.kernel import netns as nsmod
from reconciler.plugins.iface import kernel_errors

SUPPORTED_VERSIONS = ALL_VERSIONS
LO = "lo"


def add(args: CmdArgs) -> Result:
    with nsmod.session(), kernel_errors("loopback"):
        links.set_up(LO, args.netns)
        found = addrs.list_addrs(args.netns, LO)
    for a in found:
        if not a.address.ip.is_loopback:
            raise CNIError(INTERNAL, f"loopback interface found with non-loopback address {a.address}")
    prev = args.config.get("prevResult")
    if prev:
        return parse_result(prev, args.cni_version)
    return Result(
        cni_version=args.cni_version,
        interfaces=[Interface(name=LO, mac="00:00:00:00:00:00", sandbox=args.netns)],
        ips=[IPConfig(address=str(a.address), interface=0) for a in found],
    )


def delete(args: CmdArgs) -> None:
    if not args.netns or not nsmod.exists(args.netns):
        return
    with nsmod.session(), kernel_errors("loopback"):
        try:
            links.set_down(LO, args.netns)
        except (nsmod.LinkNotFound, nsmod.NetnsNotFound):
            return


def check(args: CmdArgs) -> None:
    with nsmod.session(), kernel_errors("loopback"):
        link = links.find(LO, args.netns)
    if link is None or not link.up:
        raise CNIError(INTERNAL, "loopback interface is down")
