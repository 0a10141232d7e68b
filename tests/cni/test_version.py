"""Result conversion between every pair of spec versions."""

from __future__ import annotations

import itertools

import pytest

from reconciler.cni.types import Result
from reconciler.cni.version import ALL_VERSIONS, LEGACY, parse_result, result_for_version
from reconciler.errors import CNIError

FULL = {
    "cniVersion": "1.1.0",
    "interfaces": [
        {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
        {"name": "veth1234abcd", "mac": "aa:bb:cc:dd:ee:02", "mtu": 1400},
        {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/x", "mtu": 1400},
    ],
    "ips": [
        {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2},
        {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
    ],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "table": 100, "scope": 0}, {"dst": "::/0"}],
    "dns": {"nameservers": ["10.1.0.1"], "search": ["example.test"]},
}


def essence(result: Result, version: str) -> dict:
    """What survives a trip through `version`."""
    data = result_for_version(result, version)
    return parse_result(data, version).dump() | {"cniVersion": "-"}


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(ALL_VERSIONS, ALL_VERSIONS)))
def test_round_trip_every_pair(src: str, dst: str) -> None:
    start = parse_result(FULL)
    via_src = parse_result(result_for_version(start, src), src)
    via_dst = parse_result(result_for_version(via_src, dst), dst)
    # Going through the older of the two loses exactly what that version cannot express.
    older = min(src, dst, key=ALL_VERSIONS.index)
    assert essence(via_dst, older) == essence(start, older)
    # And converting back up to the source version is stable.
    assert result_for_version(parse_result(result_for_version(via_dst, src), src), src) == result_for_version(
        via_dst, src
    )


def test_040_has_ip_version_and_no_11_fields() -> None:
    out = result_for_version(parse_result(FULL), "0.4.0")
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert all("mtu" not in i for i in out["interfaces"])
    assert all("table" not in r and "scope" not in r for r in out["routes"])


def test_020_shape() -> None:
    out = result_for_version(parse_result(FULL), "0.2.0")
    assert out["ip4"] == {"ip": "10.1.0.5/24", "gateway": "10.1.0.1", "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]}
    assert out["ip6"]["ip"] == "fd00::5/64"
    assert "interfaces" not in out


@pytest.mark.parametrize("version", LEGACY)
def test_020_without_ips_is_an_error(version: str) -> None:
    result = parse_result({"cniVersion": "1.0.0", "interfaces": [{"name": "lo"}]})
    with pytest.raises(CNIError) as err:
        result_for_version(result, version)
    assert err.value.code == 1 and "no valid IP" in err.value.msg


def test_unknown_version_is_code_1() -> None:
    with pytest.raises(CNIError) as err:
        result_for_version(parse_result(FULL), "9.9.9")
    assert err.value.code == 1


def test_plugin_specific_result_fields_pass_through() -> None:
    data = dict(FULL, **{"x-vendor": {"k": 1}})
    assert parse_result(data).dump()["x-vendor"] == {"k": 1}


def test_bad_result_is_decoding_error() -> None:
    with pytest.raises(CNIError) as err:
        parse_result({"cniVersion": "1.0.0", "ips": [{"address": "not-an-ip"}]})
    assert err.value.code == 6


def test_addresses_are_normalised_and_bad_ones_refused_every_time() -> None:
    """Parsing is cached (reconciler.ipparse): the normal form and the errors must not depend on it."""
    data = {"cniVersion": "1.0.0", "ips": [{"address": "fd00:0::0a/64", "gateway": "fd00::0:1"}],
            "routes": [{"dst": "10.9.8.7/8", "gw": "10.0.0.1"}]}
    for _ in range(2):
        result = parse_result(data)
        assert (result.ips[0].address, result.ips[0].gateway) == ("fd00::a/64", "fd00::1")
        assert result.ips[0].iface.network.prefixlen == 64
        assert result.routes[0].dst == "10.0.0.0/8"
        for bad in ("10.0.0.300/24", "10.0.0.1/33"):
            with pytest.raises(CNIError) as err:
                parse_result({"cniVersion": "1.0.0", "ips": [{"address": bad}]})
            assert err.value.code == 6 and "address" in err.value.details
