"""Traffic control for shaping: tbf qdiscs, ingress redirect to an ifb, ifb devices.

Everything takes a `netns` argument (a path or name under /run/netns; None is
the caller's own namespace) and plain values: the layer knows no CNI types.
The tbf parameters follow the reference bandwidth plugin exactly (25 ms of
latency, buffer in scheduler ticks) so that its state and ours compare equal.
"""

from __future__ import annotations

import errno
import hashlib
import logging
from dataclasses import dataclass
from functools import cache
from typing import Any

from reconciler.kernel import links
from reconciler.kernel.netns import NetnsNotFound
from reconciler.kernel.netns import ipr as _ipr

log = logging.getLogger(__name__)

TIME_UNITS_PER_SEC = 1_000_000
LATENCY_USEC = 25_000  # the reference's fixed tbf latency (25 ms)
TBF_HANDLE = 0x10000  # 1:
INGRESS_HANDLE = 0xFFFF0000  # ffff:
TC_H_ROOT = 0xFFFFFFFF
TC_H_INGRESS = 0xFFFFFFF1
REDIRECT_CLASSID = 0x10001  # 1:1, as the reference's u32 filter
ETH_P_ALL = 0x0003
IFB_PREFIX = "bwp"
MAX_RATE_BYTES = 2**32 - 1  # tbf's 32-bit rate field (TCA_TBF_RATE64 is not sent)


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
    from pyroute2.netlink.exceptions import NetlinkError

    created = False
    with _ipr(netns) as ipr:
        if not ipr.link_lookup(ifname=name):
            try:
                ipr.link("add", ifname=name, kind="ifb", mtu=mtu, txqlen=0)
                created = True
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise TcError(f"failed to create ifb {name}: {exc}", exc.code) from exc
    link = links.get(name, netns)
    if link.kind != "ifb":
        raise TcError(f"{name} exists and is not an ifb device (kind {link.kind or 'unknown'})", errno.EEXIST)
    links.set_link(name, netns, state="up", mtu=mtu)
    if alias and created:
        links.set_alias(name, alias, netns)
    return links.get(name, netns), created


def _index(ipr: Any, dev: str) -> int:
    idx = ipr.link_lookup(ifname=dev)
    if not idx:
        raise TcError(f"link {dev} not found", errno.ENODEV)
    return int(idx[0])


def set_tbf(dev: str, tbf: Tbf, netns: str | None = None) -> None:
    """Make a tbf with `tbf`'s parameters the root qdisc (handle 1:) of `dev`, replacing what is there."""
    from pyroute2.netlink.exceptions import NetlinkError

    with _ipr(netns) as ipr:
        index = _index(ipr, dev)
        burst = tbf.limit - int(float(tbf.rate) * LATENCY_USEC / TIME_UNITS_PER_SEC)
        try:
            ipr.tc("replace", "tbf", index, TBF_HANDLE, rate=tbf.rate, burst=burst, limit=tbf.limit)
        except NetlinkError as exc:
            raise TcError(f"failed to set tbf on {dev}: {exc}", exc.code) from exc
    actual = read_tbf(dev, netns)
    if actual is not None and actual.buffer != tbf.buffer:
        log.debug("tbf buffer on %s is %d ticks, reference formula gives %d", dev, actual.buffer, tbf.buffer)


def read_tbf(dev: str, netns: str | None = None) -> Tbf | None:
    """The root tbf of `dev`, or None when the root qdisc is something else."""
    with _ipr(netns) as ipr:
        idx = ipr.link_lookup(ifname=dev)
        if not idx:
            return None
        for msg in ipr.get_qdiscs(idx[0]):
            if msg.get("TCA_KIND") != "tbf" or msg["parent"] != TC_H_ROOT:
                continue
            parms = msg.get("TCA_OPTIONS").get("TCA_TBF_PARMS")
            return Tbf(rate=int(parms["rate"]), limit=int(parms["limit"]), buffer=int(parms["buffer"]))
    return None


def set_ingress_redirect(dev: str, target: str, netns: str | None = None) -> None:
    """Ingress qdisc ffff: on `dev` with one u32 match-all filter (prio 1) redirecting to `target`'s egress."""
    from pyroute2.netlink.exceptions import NetlinkError

    with _ipr(netns) as ipr:
        index = _index(ipr, dev)
        target_index = _index(ipr, target)
        try:
            ipr.tc("add", "ingress", index, INGRESS_HANDLE)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise TcError(f"failed to add ingress qdisc on {dev}: {exc}", exc.code) from exc
        try:
            ipr.tc("del-filter", index=index, parent=INGRESS_HANDLE, prio=1, protocol=ETH_P_ALL)
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.EINVAL):
                raise TcError(f"failed to clear ingress filters on {dev}: {exc}", exc.code) from exc
        action = {"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": target_index}
        try:
            ipr.tc(
                "add-filter",
                "u32",
                index,
                parent=INGRESS_HANDLE,
                prio=1,
                protocol=ETH_P_ALL,
                target=REDIRECT_CLASSID,
                keys=["0x0/0x0+0"],
                action=action,
            )
        except NetlinkError as exc:
            raise TcError(f"failed to add redirect filter on {dev}: {exc}", exc.code) from exc


def read_redirect(dev: str, netns: str | None = None) -> list[int]:
    """Ifindexes that the ingress filters of `dev` redirect to (empty when there is no ingress qdisc)."""
    with _ipr(netns) as ipr:
        idx = ipr.link_lookup(ifname=dev)
        if not idx:
            return []
        if not any(q.get("TCA_KIND") == "ingress" for q in ipr.get_qdiscs(idx[0])):
            return []
        targets: list[int] = []
        for msg in ipr.get_filters(idx[0], parent=INGRESS_HANDLE):
            targets.extend(_mirred_targets(msg))
        return targets


def _mirred_targets(msg: Any) -> list[int]:
    opts = msg.get("TCA_OPTIONS")
    acts = opts.get("TCA_U32_ACT") if opts is not None else None
    if acts is None:
        return []
    out: list[int] = []
    for _name, act in acts.get("attrs", []):
        out.extend(_one_mirred(act))
    return out


def _one_mirred(act: Any) -> list[int]:
    if not hasattr(act, "get") or act.get("TCA_ACT_KIND") != "mirred":
        return []
    parms = act.get("TCA_ACT_OPTIONS").get("TCA_MIRRED_PARMS")
    return [int(parms["ifindex"])] if parms else []


def clear_qdiscs(dev: str, netns: str | None = None, *, root: bool = True, ingress: bool = True) -> None:
    """Remove our root and/or ingress qdisc from `dev` (missing device or qdisc is fine)."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with _ipr(netns) as ipr:
            idx = ipr.link_lookup(ifname=dev)
            if not idx:
                return
            for wanted, parent in ((root, TC_H_ROOT), (ingress, TC_H_INGRESS)):
                if not wanted:
                    continue
                try:
                    ipr.tc("del", index=idx[0], parent=parent)
                except NetlinkError as exc:
                    if exc.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                        raise
    except NetnsNotFound:
        return
