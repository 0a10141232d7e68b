"""host-device plugin, on this host: a veth end in the host stand-in namespace is the "device"."""

from __future__ import annotations

import json
import subprocess

import pytest
from linktest import Env, container_state, failed, in_process, ip, link_json, link_names, normalise, ok

from tests.conftest import wait_until

DEV_MAC = "02:00:00:aa:00:01"


@pytest.fixture
def device(env: Env) -> str:
    """rcnhd0 (MAC 02:00:00:aa:00:01) in the host namespace; its peer rcnhd1 stays there."""
    ip("-n", env.host, "link", "add", "rcnhd0", "address", DEV_MAC, "type", "veth", "peer", "name", "rcnhd1")
    return "rcnhd0"


def _move_cycle(env: Env, conf: dict, reference: bool) -> tuple[dict, dict]:
    if "ipam" in conf:  # a store per implementation: host-local allocates round-robin
        conf = {**conf, "ipam": {**conf["ipam"], "dataDir": str(env.tmp / ("ref" if reference else "ours"))}}
    name, path = env.container()
    result = ok(env.run("ADD", conf, path, reference=reference))
    state = container_state(name)
    assert "rcnhd0" not in link_names(env.host)
    if conf["cniVersion"] != "0.3.1":
        ok(env.run("CHECK", conf, path, reference=reference, prev=result))
    ok(env.run("DEL", conf, path, reference=reference, prev=result))
    back = link_json(env.host, "rcnhd0")
    assert back is not None and back["address"] == DEV_MAC
    assert link_names(name) == ["lo"]
    store = env.tmp / ("ref" if reference else "ours") / env.net
    assert not store.exists() or not [p for p in store.iterdir() if p.name[0].isdigit()]
    return normalise(result, {path: "SANDBOX"}), state


@pytest.mark.parametrize("selector", ["device", "hwaddr"])
@pytest.mark.parametrize("layer3", [False, True])
def test_same_as_reference(env: Env, device: str, reference_plugins, selector: str, layer3: bool) -> None:
    fields = {"device": device} if selector == "device" else {"hwaddr": DEV_MAC.upper()}
    ipam = env.host_local("10.81.0.0/24", routes=[{"dst": "10.98.0.0/16", "gw": "10.81.0.1"}]) if layer3 else None
    conf = env.conf("host-device", ipam=ipam, **fields)
    ref_result, ref_state = _move_cycle(env, conf, reference=True)
    our_result, our_state = _move_cycle(env, conf, reference=False)
    assert our_result == ref_result
    # the kernel state inside the container matches, except that we leave IFLA_IFALIAS set
    assert our_state == ref_state


def test_renames_through_a_temp_netns_when_the_container_has_the_host_name(env: Env, device: str) -> None:
    """The reference v1.1.1 moves the device under its host name first and fails here."""
    name, path = env.container()
    ip("-n", name, "link", "add", device, "type", "veth", "peer", "name", "rcnx")
    conf = env.conf("host-device", device=device)
    result = ok(env.run("ADD", conf, path))
    assert result["interfaces"][0]["name"] == "eth0"
    lk = link_json(name, "eth0")
    assert lk is not None and lk["address"] == DEV_MAC and lk.get("ifalias") == device
    ok(env.run("DEL", conf, path, prev=result))
    assert link_json(env.host, device) is not None and link_json(name, device) is not None


def test_idempotent_del_and_del_without_netns(env: Env, device: str) -> None:
    name, path = env.container()
    conf = env.conf("host-device", device=device, ipam=env.host_local("10.82.0.0/24"))
    result = ok(env.run("ADD", conf, path))
    ok(env.run("DEL", conf, path, prev=result))
    ok(env.run("DEL", conf, path, prev=result))
    result = ok(env.run("ADD", conf, path))
    assert len(env.allocated()) == 1
    ok(env.run("DEL", conf, "", prev=result))  # no CNI_NETNS: the address is still released
    assert env.allocated() == []


def test_del_after_netns_deleted_releases_address(env: Env, device: str) -> None:
    name, path = env.container()
    conf = env.conf("host-device", device=device, ipam=env.host_local("10.83.0.0/24"))
    result = ok(env.run("ADD", conf, path))
    subprocess.run(["ip", "netns", "delete", name], check=True)  # a veth dies with its netns
    ok(env.run("DEL", conf, path, prev=result))
    assert env.allocated() == []


def test_ifname_taken_in_container_leaves_device_on_host(env: Env, device: str) -> None:
    name, path = env.container()
    ip("-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "rcnp")
    conf = env.conf("host-device", device=device, ipam=env.host_local("10.84.0.0/24"))
    err = failed(env.run("ADD", conf, path))
    assert "eth0" in err["msg"]
    assert link_json(env.host, device) is not None and env.allocated() == []


def test_check_detects_drift(env: Env, device: str) -> None:
    name, path = env.container()
    conf = env.conf("host-device", device=device, ipam=env.host_local("10.85.0.0/24"))
    result = ok(env.run("ADD", conf, path))
    ip("-n", name, "link", "set", "eth0", "address", "02:00:00:aa:00:99")
    err = failed(env.run("CHECK", conf, path, prev=result))
    assert "MAC" in err["msg"]
    ip("-n", name, "link", "set", "eth0", "address", DEV_MAC)
    ip("-n", name, "route", "flush", "dev", "eth0")
    ip("-n", name, "addr", "flush", "dev", "eth0")
    err = failed(env.run("CHECK", conf, path, prev=result))
    assert "10.85.0.2" in err["msg"]


@pytest.mark.parametrize(("fields", "needle"), [
    ({}, "specify either"),
    ({"kernelpath": "sys/devices/x"}, "/sys/devices/"),
    ({"hwaddr": "nonsense"}, "MAC"),
])
def test_config_errors(env: Env, fields: dict, needle: str) -> None:
    _, path = env.container()
    err = failed(env.run("ADD", env.conf("host-device", **fields), path))
    assert err["code"] == 7 and needle in err["msg"], err


@pytest.mark.parametrize("fields", [{"device": "rcnnosuch"}, {"hwaddr": "02:00:00:aa:00:77"},
                                    {"kernelpath": "/sys/devices/rcn-none"}, {"pciBusID": "0000:ff:1f.7"}])
def test_missing_device(env: Env, fields: dict) -> None:
    name, path = env.container()
    err = failed(env.run("ADD", env.conf("host-device", **fields), path))
    assert err["code"] == 999 and "failed to find host device" in err["msg"], err
    assert link_names(name) == ["lo"]


def test_kernelpath_selects_a_device_listed_under_it(env: Env, device: str) -> None:
    """/sys/devices/virtual/net lists the host namespace's virtual devices (sysfs as `ip netns exec`
    mounts it): the first one that is a link, loopback excepted, is taken."""
    if in_process():
        pytest.skip("needs the plugin exec'd under `ip netns exec` for the host namespace's sysfs view")
    name, path = env.container()
    conf = env.conf("host-device", kernelpath="/sys/devices/virtual")
    result = ok(env.run("ADD", conf, path))
    assert result["interfaces"][0]["mac"] == DEV_MAC
    ok(env.run("DEL", conf, path, prev=result))
    assert link_json(env.host, device) is not None


def _v6_flags(netns: str) -> list[tuple[str, bool]]:
    """(IPv6 global address, still tentative) on the container's eth0."""
    links = json.loads(ip("-n", netns, "-j", "addr", "show", "dev", "eth0").stdout or "[]")
    return [(a["local"], bool(a.get("tentative"))) for lk in links for a in lk.get("addr_info", [])
            if a["family"] == "inet6" and a.get("scope") == "global"]


def test_ipv6_on_a_device_without_carrier_is_added_and_settles_when_the_carrier_comes(env: Env, device: str,
                                                                                        reference_plugins) -> None:
    """A NIC without its cable (here: its veth peer down) cannot run DAD until the carrier comes, so
    nothing is waited for: ADD succeeds, as the reference's, with the address tentative; plugging
    the cable in (the peer up) settles it. We used to wait 10 s and fail the ADD."""
    conf = env.conf("host-device", device=device,
                    ipam={"type": "static", "addresses": [{"address": "fd00:84::5/64"}, {"address": "10.84.0.5/24"}]})
    for reference in (True, False):
        name, path = env.container()
        result = ok(env.run("ADD", conf, path, reference=reference))
        assert [ip["address"] for ip in result["ips"]] == ["fd00:84::5/64", "10.84.0.5/24"]
        assert _v6_flags(name) == [("fd00:84::5", True)]
        if not reference:
            ok(env.run("CHECK", conf, path, prev=result))
            ip("-n", env.host, "link", "set", "rcnhd1", "up")  # the cable goes in
            assert wait_until(lambda name=name: _v6_flags(name) == [("fd00:84::5", False)], timeout=30)
        ok(env.run("DEL", conf, path, reference=reference, prev=result))
        assert link_json(env.host, device) is not None
