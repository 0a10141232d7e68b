"""kernel.tc over kernel.rtnl against pyroute2, the encoder it replaced: the same shaping made both
ways in two namespaces must read back the same through `tc -j` and through our own readers."""

from __future__ import annotations

import json

import pytest

from reconciler.kernel import links, tc
from reconciler.kernel import netns as nsmod
from tests.conftest import run

RATES = [(1_000_000, 80_000), (8_000, 800), (123_456_789, 9_999_999), (10_000_000_000, 100_000_000)]


def _pyroute2_shaping(path: str, veth: str, ifb: str, tbf: tc.Tbf) -> None:
    """What kernel.tc sent through pyroute2 before (the calls and arguments it made)."""
    with nsmod.ipr(path) as ipr:
        ipr.link("add", ifname=ifb, kind="ifb", mtu=1400, txqlen=0)
        ipr.link("set", index=ipr.link_lookup(ifname=ifb)[0], state="up")
        index, target = ipr.link_lookup(ifname=veth)[0], ipr.link_lookup(ifname=ifb)[0]
        burst = tbf.limit - int(float(tbf.rate) * tc.LATENCY_USEC / tc.TIME_UNITS_PER_SEC)
        ipr.tc("replace", "tbf", target, tc.TBF_HANDLE, rate=tbf.rate, burst=burst, limit=tbf.limit)
        ipr.tc("add", "ingress", index, tc.INGRESS_HANDLE)
        action = {"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": target}
        ipr.tc("add-filter", "u32", index, parent=tc.INGRESS_HANDLE, prio=1, protocol=0x0003,
               target=tc.REDIRECT_CLASSID, keys=["0x0/0x0+0"], action=action)


def _ours(path: str, veth: str, ifb: str, tbf: tc.Tbf) -> None:
    tc.ensure_ifb(ifb, 1400, path)
    tc.set_tbf(ifb, tbf, path)
    tc.set_ingress_redirect(veth, ifb, path)


def _state(name: str, veth: str, ifb: str) -> dict:
    qdiscs = json.loads(run("tc", "-n", name, "-j", "-s", "qdisc", "show").stdout or "[]")
    for q in qdiscs:
        q.pop("stats", None)
        for key in ("bytes", "packets", "drops", "overlimits", "requeues", "backlog", "qlen"):
            q.pop(key, None)
    filters = json.loads(run("tc", "-n", name, "-j", "filter", "show", "dev", veth, "ingress").stdout or "[]")
    for f in filters:
        for action in f.get("options", {}).get("actions", []):
            action.pop("index", None)  # the kernel numbers each action it creates
    ifb_link = json.loads(run("ip", "-n", name, "-j", "-d", "link", "show", ifb).stdout)[0]
    return {"qdiscs": sorted(json.dumps(q, sort_keys=True) for q in qdiscs),
            "filters": json.dumps(filters, sort_keys=True),
            "ifb": (ifb_link["mtu"], ifb_link.get("txqlen", 0), ifb_link["linkinfo"]["info_kind"], "UP" in ifb_link["flags"])}


@pytest.mark.parametrize(("rate_bits", "burst_bits"), RATES)
def test_shaping_matches_pyroute2(make_netns, rate_bits, burst_bits):
    tbf = tc.Tbf.from_bits(rate_bits, burst_bits)
    views = []
    for make in (_pyroute2_shaping, _ours):
        name, path = make_netns("rcn-tc-")
        run("ip", "-n", name, "link", "add", "rcntv0", "type", "veth", "peer", "name", "rcntv1")
        run("ip", "-n", name, "link", "set", "rcntv0", "up")
        make(path, "rcntv0", "rcntifb0", tbf)
        views.append(_state(name, "rcntv0", "rcntifb0"))
        assert tc.read_tbf("rcntifb0", path) == tc.read_tbf("rcntifb0", path) is not None
        assert tc.read_redirect("rcntv0", path) == [links.get("rcntifb0", path).index]
    assert views[0] == views[1]


def test_idempotent_and_cleared(make_netns):
    name, path = make_netns("rcn-tc-")
    run("ip", "-n", name, "link", "add", "rcntv0", "type", "veth", "peer", "name", "rcntv1")
    tbf = tc.Tbf.from_bits(2_000_000, 160_000)
    _ours(path, "rcntv0", "rcntifb0", tbf)
    before = _state(name, "rcntv0", "rcntifb0")
    _, created = tc.ensure_ifb("rcntifb0", 1400, path)
    assert not created
    tc.set_tbf("rcntifb0", tbf, path)
    tc.set_ingress_redirect("rcntv0", "rcntifb0", path)  # replaces its filter, does not add a second
    assert _state(name, "rcntv0", "rcntifb0") == before
    have = tc.read_tbf("rcntifb0", path)
    assert have is not None and (have.rate, have.limit) == (tbf.rate, tbf.limit) and abs(have.buffer - tbf.buffer) <= 1
    tc.set_tbf("rcntv0", tbf, path)
    tc.clear_qdiscs("rcntv0", path)
    tc.clear_qdiscs("rcntv0", path)  # already gone: fine
    tc.clear_qdiscs("rcn-none", path)
    tc.clear_qdiscs("rcntv0", "/run/netns/rcn-tc-gone")
    assert tc.read_tbf("rcntv0", path) is None and tc.read_redirect("rcntv0", path) == []
    with pytest.raises(tc.TcError):
        tc.set_tbf("rcn-none", tbf, path)
