"""Traffic control for shaping: tbf qdiscs, ingress redirect to an ifb, ifb devices.

Everything takes a `netns` argument (a path or name under /run/netns; None is
the caller's own namespace) and plain values: the layer knows no CNI types.
The tbf parameters follow the reference bandwidth plugin exactly (25 ms of
latency, buffer in scheduler ticks) so that its state and ours compare equal.
The requests go over kernel.rtnl's socket, encoded here as pyroute2 encoded
them (tests/kernel/test_tc.py compares the two): a cold bandwidth plugin
imports no pyroute2.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import struct
from dataclasses import dataclass
from functools import cache

from reconciler.kernel import links, rtnl
from reconciler.kernel.netns import NetnsNotFound

log = logging.getLogger(__name__)

TIME_UNITS_PER_SEC = 1_000_000
LATENCY_USEC = 25_000  # the reference's fixed tbf latency (25 ms)
TBF_HANDLE = 0x10000  # 1:
INGRESS_HANDLE = 0xFFFF0000  # ffff:
TC_H_ROOT = 0xFFFFFFFF
TC_H_INGRESS = 0xFFFFFFF1
REDIRECT_CLASSID = 0x10001  # 1:1, as the reference's u32 filter
ETH_P_ALL_BE = 0x0300  # ETH_P_ALL (3) in network byte order, as tcm_info carries it
IFB_PREFIX = "bwp"
MAX_RATE_BYTES = 2**32 - 1  # tbf's 32-bit rate field (TCA_TBF_RATE64 is not sent)

# rtnetlink's traffic-control messages (linux/rtnetlink.h, pkt_sched.h, pkt_cls.h, tc_act/tc_mirred.h)
RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 44, 45, 46
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_TBF_PARMS, TCA_TBF_RTAB = 1, 2
TCA_U32_CLASSID, TCA_U32_SEL, TCA_U32_ACT = 1, 5, 7
TCA_ACT_KIND, TCA_ACT_OPTIONS, TCA_MIRRED_PARMS = 1, 2, 2
TC_ACT_STOLEN, TCA_EGRESS_REDIR, TC_U32_TERMINAL = 4, 1, 1
RTAB_MTU = 1600  # the rate table covers packets up to this size, as tc and pyroute2 build it
TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
TBF_QOPT = struct.Struct("=BBHhHIBBHhHIIII")  # rate and peak tc_ratespec, limit, buffer, mtu
MIRRED = struct.Struct("=IIiiiiI")  # index, capab, action, refcnt, bindcnt, eaction, ifindex
U32_SEL = struct.Struct("=BBBxHHhhI")  # flags, offshift, nkeys, offmask, off, offoff, hoff, hmask
U32_KEY = struct.Struct("=IIii")  # mask, val, off, offmask


class TcError(Exception):
    """A traffic-control operation failed; `errno` is the netlink error if any."""

    def __init__(self, msg: str, err: int = 0) -> None:
        super().__init__(msg)
        self.errno = err


def ifb_name(network: str, container_id: str) -> str:
    """The reference's ifb name: `bwp` + first 12 hex digits of sha512(network + containerID)."""
    digest = hashlib.sha512((network + container_id).encode()).hexdigest()
    return IFB_PREFIX + digest[:12]


@cache
def tick_in_usec() -> float:
    """Scheduler ticks per microsecond, from /proc/net/psched (as tc and netlink libraries do)."""
    try:
        with open("/proc/net/psched") as fh:
            t2us, us2t, clock_res, _ = (int(x, 16) for x in fh.read().split()[:4])
    except (OSError, ValueError):
        return 1.0
    return float(t2us) / us2t * (float(clock_res) / TIME_UNITS_PER_SEC)


@dataclass(frozen=True)
class Tbf:
    """tbf parameters as the kernel stores them: rate in bytes/s, limit in bytes, buffer in ticks."""

    rate: int
    limit: int
    buffer: int

    @classmethod
    def from_bits(cls, rate_bits: int, burst_bits: int) -> Tbf:
        """The reference's conversion: rate/8, burst/8, buffer = ticks(burst*1e6/rate), limit = rate*25ms + burst."""
        if rate_bits <= 0 or burst_bits <= 0:
            raise ValueError("rate and burst must be positive")
        rate = rate_bits // 8
        burst = burst_bits // 8
        if rate <= 0:
            raise ValueError("rate must be at least 8 bits/s")
        if rate > MAX_RATE_BYTES:
            raise ValueError(f"rate above {MAX_RATE_BYTES * 8} bits/s is not supported")
        usec = int(float(burst) * TIME_UNITS_PER_SEC / float(rate)) & 0xFFFFFFFF
        buffer = int(float(usec) * tick_in_usec()) & 0xFFFFFFFF
        limit = int(float(rate) * LATENCY_USEC / TIME_UNITS_PER_SEC) + burst
        return cls(rate=rate, limit=limit & 0xFFFFFFFF, buffer=buffer)


def ensure_ifb(name: str, mtu: int, netns: str | None = None, alias: str = "") -> tuple[links.Link, bool]:
    """Create the ifb `name` (up, txqlen 0, `mtu`, ifalias `alias`) unless it exists; returns (link, created)."""
    created = False
    link = links.find(name, netns)
    if link is None:
        try:
            rtnl.create_link(netns, name, "ifb", mtu=mtu, txqlen=0)
            created = True
        except rtnl.NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise TcError(f"failed to create ifb {name}: {exc.strerror}", exc.code) from exc
        link = links.get(name, netns)
    if link.kind != "ifb":
        raise TcError(f"{name} exists and is not an ifb device (kind {link.kind or 'unknown'})", errno.EEXIST)
    links.set_link(name, netns, state="up", mtu=mtu)
    if alias and created:
        links.set_alias(name, alias, netns)
    return links.get(name, netns), created


def _index(dev: str, netns: str | None) -> int:
    link = links.find(dev, netns)
    if link is None:
        raise TcError(f"link {dev} not found", errno.ENODEV)
    return int(link.index)


def _xmittime(rate: int, size: int) -> int:
    """Ticks to send `size` bytes at `rate` bytes/s (tc's tc_calc_xmittime, truncated to 32 bits)."""
    return int(int(TIME_UNITS_PER_SEC * (float(size) / rate)) * tick_in_usec()) & 0xFFFFFFFF


def _rate_table(rate: int) -> tuple[int, bytes]:
    """(cell_log, the 256-entry rate table) for `rate`: what tc and pyroute2 send with a tbf.
    The kernel uses it only to recognise the link layer; the rate itself is in the tc_ratespec."""
    cell_log = 0
    while (RTAB_MTU >> cell_log) > 255:
        cell_log += 1
    return cell_log, b"".join(rtnl.U32.pack(_xmittime(rate, (i + 1) << cell_log)) for i in range(256))


def _tbf_options(tbf: Tbf) -> bytes:
    cell_log, table = _rate_table(tbf.rate)
    qopt = TBF_QOPT.pack(cell_log, 0, 0, -1, 0, tbf.rate, 0, 0, 0, 0, 0, 0, tbf.limit, tbf.buffer, 0)
    return rtnl.attr(TCA_TBF_PARMS, qopt) + rtnl.attr(TCA_TBF_RTAB, table)


def set_tbf(dev: str, tbf: Tbf, netns: str | None = None) -> None:
    """Make a tbf with `tbf`'s parameters the root qdisc (handle 1:) of `dev`, replacing what is there."""
    body = TCMSG.pack(0, _index(dev, netns), TBF_HANDLE, TC_H_ROOT, 0)
    body += rtnl.attr_str(TCA_KIND, "tbf") + rtnl.attr(TCA_OPTIONS, _tbf_options(tbf))
    try:
        rtnl.request(netns, RTM_NEWQDISC, rtnl.NLM_F_ACK | rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE, body)
    except rtnl.NetlinkError as exc:
        raise TcError(f"failed to set tbf on {dev}: {exc.strerror}", exc.code) from exc


Qdiscs = dict[tuple[int, int], tuple[bytes, int, int]]  # (ifindex, parent) -> the qdisc's message (undecoded)


def read_qdiscs(netns: str | None = None) -> Qdiscs:
    """Every qdisc of the namespace, in one dump: the kernel lists every link's whatever the request
    names, so a caller that looks at several links (bandwidth's CHECK) reads them once. Only the
    headers are decoded here; a qdisc's attributes when it is looked up."""
    out: Qdiscs = {}
    for data, start, end, kind in rtnl.request(netns, RTM_GETQDISC, rtnl.NLM_F_DUMP, TCMSG.pack(0, 0, 0, 0, 0)):
        if kind == RTM_NEWQDISC:
            _family, ifindex, _handle, parent, _info = TCMSG.unpack_from(data, start + 16)
            out[(ifindex, parent)] = (data, start, end)
    return out


def _qdisc_kind(qdiscs: Qdiscs, index: int, parent: int) -> tuple[str, dict[int, bytes]]:
    """(TCA_KIND, attributes) of link `index`'s qdisc under `parent` (("", {}) if none)."""
    message = qdiscs.get((index, parent))
    if message is None:
        return "", {}
    data, start, end = message
    found = rtnl.attrs(data, start + 16 + TCMSG.size, end)
    return rtnl.string(found.get(TCA_KIND)), found


def read_tbf(dev: str, netns: str | None = None, qdiscs: Qdiscs | None = None) -> Tbf | None:
    """The root tbf of `dev`, or None when the root qdisc is something else (`qdiscs`: `read_qdiscs`'s,
    when the caller has them)."""
    link = links.find(dev, netns)
    if link is None:
        return None
    kind, found = _qdisc_kind(read_qdiscs(netns) if qdiscs is None else qdiscs, link.index, TC_H_ROOT)
    parms = rtnl.nested(found.get(TCA_OPTIONS)).get(TCA_TBF_PARMS)
    if kind != "tbf" or parms is None or len(parms) < TBF_QOPT.size:
        return None
    fields = TBF_QOPT.unpack_from(parms)
    return Tbf(rate=fields[5], limit=fields[12], buffer=fields[13])


def _redirect_options(target_index: int) -> bytes:
    """u32 options: one match-all key, classid 1:1, and a mirred action redirecting to `target_index`'s egress."""
    parms = MIRRED.pack(0, 0, TC_ACT_STOLEN, 0, 0, TCA_EGRESS_REDIR, target_index)
    action = rtnl.attr_str(TCA_ACT_KIND, "mirred")
    action += rtnl.attr(TCA_ACT_OPTIONS | rtnl.NLA_F_NESTED, rtnl.attr(TCA_MIRRED_PARMS, parms))
    selector = U32_SEL.pack(TC_U32_TERMINAL, 0, 1, 0, 0, 0, 0, 0) + U32_KEY.pack(0, 0, 0, 0)
    return (rtnl.attr(TCA_U32_ACT, rtnl.attr(1, action)) + rtnl.attr_u32(TCA_U32_CLASSID, REDIRECT_CLASSID)
            + rtnl.attr(TCA_U32_SEL, selector))


def set_ingress_redirect(dev: str, target: str, netns: str | None = None) -> None:
    """Ingress qdisc ffff: on `dev` with one u32 match-all filter (prio 1) redirecting to `target`'s egress."""
    index = _index(dev, netns)
    target_index = _index(target, netns)
    ingress = TCMSG.pack(0, index, INGRESS_HANDLE, TC_H_INGRESS, 0) + rtnl.attr_str(TCA_KIND, "ingress")
    try:
        rtnl.request(netns, RTM_NEWQDISC, rtnl.NLM_F_ACK | rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, ingress)
    except rtnl.NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise TcError(f"failed to add ingress qdisc on {dev}: {exc.strerror}", exc.code) from exc
    try:  # every filter under ffff: (the ADD is idempotent: a second one replaces, not adds)
        rtnl.request(netns, RTM_DELTFILTER, rtnl.NLM_F_ACK, TCMSG.pack(0, index, 0, INGRESS_HANDLE, 0))
    except rtnl.NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.EINVAL):
            raise TcError(f"failed to clear ingress filters on {dev}: {exc.strerror}", exc.code) from exc
    info = (1 << 16) | ETH_P_ALL_BE  # prio 1, protocol all
    body = TCMSG.pack(0, index, 0, INGRESS_HANDLE, info) + rtnl.attr_str(TCA_KIND, "u32")
    body += rtnl.attr(TCA_OPTIONS, _redirect_options(target_index))
    try:
        rtnl.request(netns, RTM_NEWTFILTER, rtnl.NLM_F_ACK | rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, body)
    except rtnl.NetlinkError as exc:
        raise TcError(f"failed to add redirect filter on {dev}: {exc.strerror}", exc.code) from exc


def read_redirect(dev: str, netns: str | None = None, qdiscs: Qdiscs | None = None) -> list[int]:
    """Ifindexes that the ingress filters of `dev` redirect to (empty when there is no ingress qdisc;
    `qdiscs`: `read_qdiscs`'s, when the caller has them)."""
    link = links.find(dev, netns)
    if link is None:
        return []
    kind, _found = _qdisc_kind(read_qdiscs(netns) if qdiscs is None else qdiscs, link.index, TC_H_INGRESS)
    if kind != "ingress":
        return []
    targets: list[int] = []
    request = TCMSG.pack(0, link.index, 0, INGRESS_HANDLE, 0)  # filter dumps are per link and parent
    for data, start, end, msg_kind in rtnl.request(netns, RTM_GETTFILTER, rtnl.NLM_F_DUMP, request):
        if msg_kind != RTM_NEWTFILTER:
            continue
        found = rtnl.attrs(data, start + 16 + TCMSG.size, end)
        actions = rtnl.nested(rtnl.nested(found.get(TCA_OPTIONS)).get(TCA_U32_ACT))
        for _prio, action in sorted(actions.items()):
            targets.extend(_mirred_target(action))
    return targets


def _mirred_target(action: bytes) -> list[int]:
    fields = rtnl.nested(action)
    if rtnl.string(fields.get(TCA_ACT_KIND)) != "mirred":
        return []
    parms = rtnl.nested(fields.get(TCA_ACT_OPTIONS)).get(TCA_MIRRED_PARMS)
    return [MIRRED.unpack_from(parms)[6]] if parms and len(parms) >= MIRRED.size else []


def clear_qdiscs(dev: str, netns: str | None = None, *, root: bool = True, ingress: bool = True) -> None:
    """Remove our root and/or ingress qdisc from `dev` (missing device or qdisc is fine)."""
    try:
        link = links.find(dev, netns)
        if link is None:
            return
        for wanted, parent in ((root, TC_H_ROOT), (ingress, TC_H_INGRESS)):
            if not wanted:
                continue
            try:
                rtnl.request(netns, RTM_DELQDISC, rtnl.NLM_F_ACK, TCMSG.pack(0, link.index, 0, parent, 0))
            except rtnl.NetlinkError as exc:
                if exc.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                    raise
    except NetnsNotFound:
        return
