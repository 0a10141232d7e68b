"""static IPAM: sources and precedence, validation, CHECK, and the reference binary as oracle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import INVALID_NETWORK_CONFIG, CNIError
from reconciler.plugins.ipam import static
from tests.plugins.ipam.ipamtest import REF_STATIC, call


def st_conf(version: str = "1.0.0", **ipam: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "rcnstatic", "ipam": {"type": "static", **ipam}}


BASE = st_conf(
    addresses=[
        {"address": "10.10.0.5/24", "gateway": "10.10.0.1"},
        {"address": "fd00:10::5/64", "gateway": "fd00:10::1"},
    ],
    routes=[{"dst": "0.0.0.0/0"}, {"dst": "10.20.0.0/16", "gw": "10.10.0.254"}],
    dns={"nameservers": ["10.10.0.53"], "domain": "rcn.test", "search": ["rcn.test"]},
)


def test_add_returns_config() -> None:
    res = call(static, "ADD", BASE).dump()
    assert res["ips"] == [
        {"address": "10.10.0.5/24", "gateway": "10.10.0.1"},
        {"address": "fd00:10::5/64", "gateway": "fd00:10::1"},
    ]
    assert res["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "10.20.0.0/16", "gw": "10.10.0.254"}]
    assert res["dns"] == {"nameservers": ["10.10.0.53"], "domain": "rcn.test", "search": ["rcn.test"]}
    call(static, "DEL", BASE)
    call(static, "DEL", BASE)


def test_cni_args_append_and_gateway() -> None:
    res = call(
        static, "ADD", BASE, cni_args="IgnoreUnknown=1;IP=10.30.0.7/24,fd00:30::7/64;GATEWAY=10.30.0.1"
    )
    assert [(ip.address, ip.gateway) for ip in res.ips] == [
        ("10.10.0.5/24", "10.10.0.1"),
        ("fd00:10::5/64", "fd00:10::1"),
        ("10.30.0.7/24", "10.30.0.1"),
        ("fd00:30::7/64", None),
    ]


def test_args_then_runtime_config_replace() -> None:
    with_args = BASE | {"args": {"cni": {"ips": ["10.40.0.2/24"]}}}
    assert [ip.address for ip in call(static, "ADD", with_args).ips] == ["10.40.0.2/24"]
    both = with_args | {"runtimeConfig": {"ips": ["10.50.0.2/24", "fd00:50::2/64"]}}
    assert [ip.address for ip in call(static, "ADD", both).ips] == ["10.50.0.2/24", "fd00:50::2/64"]


@pytest.mark.parametrize(
    ("conf", "cni_args", "field"),
    [
        (st_conf(addresses=[{"address": "10.10.0.5"}]), "", "ipam.addresses[0].address"),
        (st_conf(addresses=[{"address": "10.10.0.5/33"}]), "", "ipam.addresses[0].address"),
        (
            st_conf(addresses=[{"address": "10.10.0.5/24", "gateway": "fd00::1"}]),
            "",
            "ipam.addresses[0].gateway",
        ),
        (
            st_conf(addresses=[{"address": "10.10.0.5/24", "gateway": "nope"}]),
            "",
            "ipam.addresses[0].gateway",
        ),
        (st_conf(addresses=[{"address": "10.10.0.0/24"}]), "", "network or broadcast"),
        (st_conf(addresses=[{"address": "10.10.0.5/24"}, {"address": "10.10.0.5/16"}]), "", "duplicate"),
        (st_conf(addresses=[{"address": "10.10.0.5/24"}]), "IP=10.1.1.1", "CNI_ARGS IP"),
        (st_conf(addresses=[{"address": "10.10.0.5/24"}]), "GATEWAY=x", "CNI_ARGS GATEWAY"),
        (BASE | {"runtimeConfig": {"ips": ["10.1.1.1"]}}, "", "runtimeConfig.ips[0]"),
        (BASE | {"args": {"cni": {"ips": "10.1.1.1/24"}}}, "", "args.cni.ips"),
        (st_conf(addresses=[{"address": "10.1.0.5/24"}], routes=[{"dst": "x"}]), "", "ipam.routes[0].dst: 'x'"),
        (st_conf(addresses=[{"address": "10.1.0.5/24"}], routes=[{"dst": "10.0.0.0/8", "gw": "zz"}]), "",
         "ipam.routes[0].gw: 'zz' does not"),
        (st_conf(addresses=[{"address": "10.1.0.5/24"}], dns={"nameservers": "10.1.0.53"}), "",
         "ipam.dns.nameservers: Input should be a valid list"),
        (
            st_conf("0.2.0", addresses=[{"address": "10.1.0.5/24"}, {"address": "10.2.0.5/24"}]),
            "",
            "more than 1 address per family",
        ),
    ],
)
def test_validation_names_the_field(conf: dict[str, Any], cni_args: str, field: str) -> None:
    with pytest.raises(CNIError) as err:
        call(static, "ADD", conf, cni_args=cni_args)
    assert err.value.code == INVALID_NETWORK_CONFIG
    assert field in err.value.msg


def test_check() -> None:
    prev = call(static, "ADD", BASE).dump()
    call(static, "CHECK", BASE | {"prevResult": prev})
    wrong_gw = prev | {"ips": [{"address": "10.10.0.5/24", "gateway": "10.10.0.9"}, prev["ips"][1]]}
    with pytest.raises(CNIError, match="Failed to match addr 10.10.0.5"):
        call(static, "CHECK", BASE | {"prevResult": wrong_gw})
    with pytest.raises(CNIError, match="missing from prevResult"):
        call(static, "CHECK", BASE | {"prevResult": prev | {"ips": prev["ips"][:1]}})
    with pytest.raises(CNIError, match="prevResult"):
        call(static, "CHECK", BASE)


@pytest.fixture(scope="module")
def ref_static() -> Path:
    if not REF_STATIC.exists():
        pytest.skip("reference static not installed")
    return REF_STATIC


ORACLE_CASES = [
    (BASE, ""),
    (BASE, "IgnoreUnknown=1;IP=10.30.0.7/24;GATEWAY=10.30.0.1"),
    (BASE | {"args": {"cni": {"ips": ["10.40.0.2/24"]}}}, ""),
    (BASE | {"runtimeConfig": {"ips": ["10.50.0.2/24", "fd00:50::2/64"]}}, ""),
    (st_conf("0.3.1", addresses=[{"address": "10.60.0.2/24", "gateway": "10.60.0.1"}]), ""),
    (st_conf("0.2.0", addresses=[{"address": "10.60.0.2/24", "gateway": "10.60.0.1"}]), ""),
    (st_conf(routes=[{"dst": "10.70.0.0/16", "gw": "10.60.0.1"}], dns={"nameservers": ["10.60.0.53"]}), ""),
    (st_conf(), ""),  # no addresses: the routes and DNS alone, as the reference
]


@pytest.mark.parametrize(("conf", "cni_args"), ORACLE_CASES)
def test_same_as_reference(
    plugin_dir: Path, ref_static: Path, run_bin, conf: dict[str, Any], cni_args: str
) -> None:
    outs = []
    for binary in (ref_static, plugin_dir / "static"):
        run = run_bin(binary, "ADD", conf, cni_args=cni_args)
        assert run.code == 0, (binary, run.stdout, run.stderr)
        out = run.json
        if out.get("dns") == {} and out["cniVersion"].startswith("1."):
            del out["dns"]
        outs.append(out)
    assert outs[0] == outs[1]
