"""Conntrack entries through pyroute2's ctnetlink support."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable

from reconciler.kernel.firewall.nsexec import run_in_netns

IPPROTO_UDP = 17


def flush_udp_dports(ports: Iterable[int], family: int = 4, netns: str | None = None) -> int:
    """Delete UDP entries whose original destination port is one of `ports`; returns how many.

    Stale UDP entries keep steering a flow to a previous container (or to the
    host) after a port mapping changes, because UDP has no connection end.
    """
    wanted = {int(p) for p in ports}
    if not wanted:
        return 0

    def body() -> int:
        from pyroute2 import Conntrack
        from pyroute2.conntrack import NFCTAttrTuple
        from pyroute2.netlink.exceptions import NetlinkError

        af = socket.AF_INET if family == 4 else socket.AF_INET6
        ct = Conntrack()
        deleted = 0
        try:
            flt = NFCTAttrTuple(family=af, proto=IPPROTO_UDP)
            victims = [e for e in ct.dump_entries(tuple_orig=flt) if e.tuple_orig.dport in wanted]
            for entry in victims:
                try:
                    ct.delete(entry)
                    deleted += 1
                except NetlinkError as exc:
                    if exc.code != errno.ENOENT:
                        raise
        finally:
            ct.close()
        return deleted

    return run_in_netns(netns, body)
