"""The veth pair of bridge and ptp: container end named CNI_IFNAME, host end `veth` + 8 hex digits."""

from __future__ import annotations

import ipaddress
import logging
import os

from reconciler.errors import INTERNAL, CNIError
from reconciler.kernel import addrs, links, sysctl
from reconciler.kernel import netns as nsmod
from reconciler.kernel.links import Link, LinkExists
from reconciler.kernel.netns import KernelError

log = logging.getLogger(__name__)
ATTEMPTS = 10


def random_name() -> str:
    """`veth` + 8 hex digits (4 random bytes), the reference's host-side name."""
    return "veth" + os.urandom(4).hex()


def setup_veth(ifname: str, *, netns: str, host_netns: str | None, mtu: int | None = None,
               mac: str | None = None, host_sysctls: dict[str, str | int] | None = None,
               master: int = 0) -> tuple[Link, Link]:
    """Create the pair; return (host end, container end). The container end stays down, the host end
    is created up (and enslaved to `master`, an ifindex, when given) in the same request.

    Errors when `ifname` already exists in the container; retries another host name on collisions.
    `host_sysctls`: collect the host end's sysctls there (the caller writes a batch) instead of now.
    """
    for _ in range(ATTEMPTS):
        host_name = random_name()
        try:
            host, cont = links.create_veth(host_name, ifname, netns=host_netns, peer_netns=netns, mtu=mtu,
                                           peer_mac=mac, master=master, up=True)
        except LinkExists as exc:  # either name: the container's is an error, the host's a collision
            if links.find(ifname, netns) is not None:
                raise CNIError(INTERNAL, f"container veth name provided ({ifname}) already exists") from exc
            continue
        except KernelError as exc:
            raise CNIError(INTERNAL, f"failed to make veth pair: {exc}") from exc
        if host_sysctls is not None:
            host_sysctls[f"net/ipv6/conf/{host_name}/accept_ra"] = 0
        else:
            try:
                sysctl.write_many({f"net/ipv6/conf/{host_name}/accept_ra": 0}, host_netns, missing_ok=True)
            except (OSError, ValueError) as exc:
                log.debug("accept_ra on %s: %s", host_name, exc)
        return host, cont
    raise CNIError(INTERNAL, f"failed to find a free host veth name after {ATTEMPTS} attempts")


def delete_container_link(ifname: str, netns: str) -> tuple[bool, list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]]:
    """Delete `ifname` inside `netns`; return (netns existed, its global addresses before deletion).

    A missing link or namespace is not an error (DEL is idempotent).
    """
    if not netns or not nsmod.exists(netns):
        return False, []
    try:
        found = [a.address for a in addrs.list_addrs(netns, ifname) if a.is_global]
    except (nsmod.LinkNotFound, nsmod.NetnsNotFound):
        return True, []
    links.delete(ifname, netns)
    return True, found


def host_peer(ifname: str, netns: str, host_netns: str | None) -> Link | None:
    """The host-side end of the container's veth, found through the peer index."""
    cont = links.find(ifname, netns)
    if cont is None or cont.kind != "veth" or cont.link is None:
        return None
    host = links.by_index(cont.link, host_netns)
    if host is None or host.link != cont.index:
        return None
    return host
