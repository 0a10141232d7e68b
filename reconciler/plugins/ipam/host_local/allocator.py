"""Allocation policy: which address a container gets, independent of how it is stored.

Order (the reference's RangeIter): start right after `last_reserved_ip.<set>`
when that address lies in the set (round-robin), else at the first range's
`rangeStart`; walk upward, wrap to the next range's start after each
`rangeEnd`, cycle through the ranges, stop when back at the start. The
gateway, network and IPv4 broadcast addresses are skipped.

Unlike the reference, an ADD for an (id, ifname) that already holds an address
in a range set returns that address instead of failing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from reconciler import ipparse
from reconciler.errors import INVALID_NETWORK_CONFIG, TRY_AGAIN_LATER, CNIError

from .config import IPAddr, Range, RangeSet
from .disk import Owner, Scan


class Store(Protocol):
    """What the allocator needs from storage (the caller holds the lock)."""

    def last_reserved(self, index: int) -> IPAddr | None: ...
    def reserve(self, name: str, owner: Owner) -> bool: ...
    def set_last_reserved(self, index: int, ip: str) -> None: ...
    def release(self, name: str) -> None: ...


@dataclass(frozen=True)
class Allocation:
    ip: IPAddr
    range: Range
    created: bool  # False when an existing reservation was returned

    @property
    def cidr(self) -> str:
        return f"{self.ip}/{self.range.subnet.prefixlen}"


def _addr(version: int, value: int) -> IPAddr:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def candidates(rs: RangeSet, last: IPAddr | None) -> Iterator[tuple[Range, IPAddr]]:
    """Every usable address of the set exactly once, in allocation order."""
    ranges = rs.ranges
    n = len(ranges)
    first = None if last is None else next((i for i, r in enumerate(ranges) if r.contains(last)), None)
    if first is None or last is None:
        segments = [(r, int(r.start), int(r.end)) for r in ranges]
    else:
        cur = ranges[first]
        segments = [(cur, int(last) + 1, int(cur.end))]
        segments += [
            (ranges[(first + k) % n], int(ranges[(first + k) % n].start), int(ranges[(first + k) % n].end))
            for k in range(1, n)
        ]
        segments.append((cur, int(cur.start), int(last)))
    for r, lo, hi in segments:
        value = lo
        while value <= hi:
            ip = _addr(r.version, value)
            if r.usable(ip):
                yield r, ip
            value += 1


def in_set(rs: RangeSet, scan: Scan, names: Sequence[str]) -> list[IPAddr]:
    out = [scan.ips[name] for name in names if rs.contains(scan.ips[name])]
    return sorted(out, key=int)


def free_count(rs: RangeSet, scan: Scan) -> int:
    taken = sum(1 for ip in scan.ips.values() if any(r.usable(ip) for r in rs.ranges))
    return rs.size() - taken


class Allocator:
    """Allocates one address per range set for an (id, ifname), under the store's lock."""

    def __init__(self, store: Store, scan: Scan) -> None:
        self.store = store
        self.scan = scan

    def get(self, index: int, rs: RangeSet, owner: Owner, requested: IPAddr | None) -> Allocation:
        assert owner.ifname is not None
        held = in_set(rs, self.scan, self.scan.held_by(owner.container_id, owner.ifname))
        if requested is not None:
            return self._requested(index, rs, owner, requested, held)
        if held:
            r = rs.range_for(held[0])
            assert r is not None
            return Allocation(held[0], r, created=False)
        # Counting the set's free addresses is O(reservations); needed only when they could all be taken.
        if len(self.scan.ips) >= rs.size() and free_count(rs, self.scan) <= 0:
            raise self._exhausted(rs)
        for r, ip in candidates(rs, self.store.last_reserved(index)):
            name = str(ip)
            if self.scan.taken(name):
                continue
            if self._take(index, name, owner):
                return Allocation(ip, r, created=True)
        raise self._exhausted(rs)

    def _requested(
        self, index: int, rs: RangeSet, owner: Owner, ip: IPAddr, held: list[IPAddr]
    ) -> Allocation:
        r = rs.range_for(ip)
        if r is None:
            raise CNIError(INVALID_NETWORK_CONFIG, f"requested IP address {ip} is not in range set {rs}")
        if ip == r.gateway:
            raise CNIError(INVALID_NETWORK_CONFIG, f"requested ip {ip} is subnet's gateway")
        if not r.usable(ip):
            raise CNIError(
                INVALID_NETWORK_CONFIG, f"requested ip {ip} is the network or broadcast address of {r.subnet}"
            )
        if ip in held:
            return Allocation(ip, r, created=False)
        if self.scan.taken(str(ip)) or not self._take(index, str(ip), owner):
            raise CNIError(TRY_AGAIN_LATER, f"requested IP address {ip} is not available in range set {rs}")
        return Allocation(ip, r, created=True)

    def _take(self, index: int, name: str, owner: Owner) -> bool:
        if not self.store.reserve(name, owner):
            return False
        self.scan.add(name, owner, ipparse.address(name))
        self.store.set_last_reserved(index, name)
        return True

    def release(self, allocations: Sequence[Allocation]) -> None:
        """Undo the reservations this call created (a failed multi-set ADD)."""
        for alloc in reversed(allocations):
            if alloc.created:
                self.store.release(str(alloc.ip))
                self.scan.forget(str(alloc.ip))

    @staticmethod
    def _exhausted(rs: RangeSet) -> CNIError:
        return CNIError(TRY_AGAIN_LATER, f"no IP addresses available in range set: {rs}")
