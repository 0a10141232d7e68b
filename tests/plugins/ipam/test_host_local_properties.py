"""Property tests: range parsing and allocation order against deliberately naive models."""

from __future__ import annotations

import ipaddress
import tempfile
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.errors import INVALID_NETWORK_CONFIG, TRY_AGAIN_LATER, CNIError
from reconciler.plugins.ipam import host_local as hl
from reconciler.plugins.ipam.host_local.config import parse_range
from tests.plugins.ipam.ipamtest import call, hl_conf

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def range_inputs(draw: st.DrawFn) -> tuple[dict[str, Any], int, int]:
    """A raw range object plus its subnet as (base, size); offsets may fall outside the subnet."""
    v6 = draw(st.booleans())
    bits = 128 if v6 else 32
    prefix = draw(st.integers(min_value=bits - 10, max_value=bits - 1))
    base_net = ipaddress.ip_network("fd00:77::/64" if v6 else "10.77.0.0/16")
    size = 1 << (bits - prefix)
    base = int(base_net.network_address) + draw(st.integers(0, 15)) * (1 << 10)
    host_bits = draw(st.sampled_from([0, 0, 0, 1]))
    addr = ipaddress.ip_address
    raw: dict[str, Any] = {"subnet": f"{addr(base + host_bits)}/{prefix}"}
    for key in ("rangeStart", "rangeEnd", "gateway"):
        if draw(st.booleans()):
            raw[key] = str(addr(base + draw(st.integers(-2, size + 1))))
    return raw, base + host_bits, size


def model_range(raw: dict[str, Any], base: int, size: int) -> tuple[int, int, int] | None:
    """(start, end, gateway) as integers, or None when the config must be rejected."""
    v6 = ":" in raw["subnet"]
    if size < 4 or base % size:
        return None
    net, last = base, base + size - 1
    to_int = {k: int(ipaddress.ip_address(v)) for k, v in raw.items() if k != "subnet"}
    start = to_int.get("rangeStart", net + 1)
    end = to_int.get("rangeEnd", last if v6 else last - 1)
    if not (net <= start <= last and net <= end <= last) or start > end:
        return None
    return start, end, to_int.get("gateway", net + 1)


@SETTINGS
@given(range_inputs())
def test_range_parsing_matches_model(case: tuple[dict[str, Any], int, int]) -> None:
    raw, base, size = case
    expected = model_range(raw, base, size)
    try:
        got = parse_range(raw, "r")
    except CNIError as err:
        assert err.code == INVALID_NETWORK_CONFIG
        assert expected is None, (raw, err.msg)
        return
    assert expected is not None, raw
    assert (int(got.start), int(got.end), int(got.gateway)) == expected
    # usable = in [start, end] minus gateway, network and (IPv4) broadcast
    specials = {base, expected[2]} | ({base + size - 1} if got.version == 4 else set())
    usable = [v for v in range(expected[0], expected[1] + 1) if v not in specials]
    assert got.size() == len(usable)


class Model:
    """host-local's policy as a list rotation: next free usable address after the last reserved."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.order: list[int] = []
        for lo, hi in ranges:  # /24s inside 10.88.0.0/16: gateway .1, network .0, broadcast .255
            self.order += [v for v in range(lo, hi + 1) if v & 0xFF not in (0, 1, 255)]
        self.held: dict[int, str] = {}
        self.last: int | None = None

    def add(self, cid: str) -> int | None:
        mine = sorted(ip for ip, owner in self.held.items() if owner == cid)
        if mine:
            return mine[0]
        start = self.order.index(self.last) + 1 if self.last in self.order else 0
        for k in range(len(self.order)):
            ip = self.order[(start + k) % len(self.order)]
            if ip not in self.held:
                self.held[ip] = cid
                self.last = ip
                return ip
        return None

    def delete(self, cid: str) -> None:
        self.held = {ip: o for ip, o in self.held.items() if o != cid}


@st.composite
def range_sets(draw: st.DrawFn) -> list[tuple[int, int]]:
    """1-3 small ranges in distinct /24s of 10.88.0.0/16 (so they never overlap)."""
    nets = draw(st.lists(st.integers(0, 20), min_size=1, max_size=3, unique=True))
    out = []
    for n in nets:
        lo = draw(st.integers(0, 12))
        hi = draw(st.integers(lo + 2, lo + 8))
        base = int(ipaddress.ip_address("10.88.0.0")) + n * 256
        out.append((base + lo, base + hi))
    return out


OPS = st.lists(st.tuples(st.sampled_from(["add", "add", "add", "del"]), st.integers(0, 9)), max_size=40)


@SETTINGS
@given(range_sets(), OPS)
def test_allocation_order_matches_model(ranges: list[tuple[int, int]], ops: list[tuple[str, int]]) -> None:
    addr = ipaddress.IPv4Address
    raw = []
    for lo, hi in ranges:
        net = lo & ~0xFF
        raw.append({"subnet": f"{addr(net)}/24", "rangeStart": str(addr(lo)), "rangeEnd": str(addr(hi))})
    model = Model(ranges)
    with tempfile.TemporaryDirectory(prefix="ipamprop") as tmp:
        conf = hl_conf(tmp, raw)
        for verb, n in ops:
            cid = f"c{n}"
            if verb == "del":
                call(hl, "DEL", conf, cid)
                model.delete(cid)
                continue
            expected = model.add(cid)
            try:
                got = call(hl, "ADD", conf, cid).ips[0].address
            except CNIError as err:
                assert err.code == TRY_AGAIN_LATER and expected is None, err.msg
                continue
            assert expected is not None and got == f"{addr(expected)}/24", (ranges, verb, cid)
