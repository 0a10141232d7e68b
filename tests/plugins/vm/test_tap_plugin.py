"""tap plugin: runs on this host (tun is in every kernel). The reference v1.1.1 has no tap: our
results are checked against the HEAD behaviour documented in cni-facts §2.8."""

from __future__ import annotations

import json
import subprocess

import pytest
from linktest import Env, failed, ip, link_json, link_names, ok

MAC = "02:aa:bb:cc:dd:01"


def test_l2_tap_with_every_link_field(env: Env) -> None:
    name, path = env.container()
    conf = env.conf("tap", mtu=1400, mac=MAC, multiQueue=True, owner=1234, group=4321)
    result = ok(env.run("ADD", conf, path))
    assert result == {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "mac": MAC, "sandbox": path}]}
    lk = link_json(name, "eth0")
    assert lk is not None
    data = lk["linkinfo"]["info_data"]
    assert lk["linkinfo"]["info_kind"] == "tun" and data["type"] == "tap"
    assert lk["mtu"] == 1400 and lk["address"] == MAC and "UP" in lk["flags"]
    assert data["multi_queue"] is True and data["vnet_hdr"] is True and data["persist"] is True
    assert data["user"] in (1234, "1234") or str(data["user"]) == "1234"
    assert str(data["group"]) == "4321"
    ok(env.run("CHECK", conf, path, prev=result))
    ok(env.run("DEL", conf, path, prev=result))
    assert link_json(name, "eth0") is None
    ok(env.run("DEL", conf, path, prev=result))  # twice is harmless


def test_mac_precedence_runtime_config_over_cni_args_over_conf(env: Env) -> None:
    name, path = env.container()
    conf = env.conf("tap", mac=MAC, runtimeConfig={"mac": "02:aa:bb:cc:dd:03"})
    result = ok(env.run("ADD", conf, path, cni_args="IgnoreUnknown=1;MAC=02:aa:bb:cc:dd:02"))
    assert result["interfaces"][0]["mac"] == "02:aa:bb:cc:dd:03"
    _, path2 = env.container()
    result = ok(env.run("ADD", env.conf("tap", mac=MAC), path2, cni_args="IgnoreUnknown=1;MAC=02:aa:bb:cc:dd:02"))
    assert result["interfaces"][0]["mac"] == "02:aa:bb:cc:dd:02"


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_layer3_tap_check_drift_and_release(env: Env, version: str) -> None:
    name, path = env.container()
    conf = env.conf("tap", version=version,
                    ipam=env.host_local("10.77.0.0/24", "fd00:77::/64", routes=[{"dst": "10.99.0.0/16"}]))
    result = ok(env.run("ADD", conf, path))
    assert [i["interface"] for i in result["ips"]] == [0, 0]
    assert {i["address"] for i in result["ips"]} == {"10.77.0.2/24", "fd00:77::2/64"}
    addrs = json.loads(ip("-n", name, "-j", "addr", "show", "dev", "eth0").stdout)[0]["addr_info"]
    have = {f"{a['local']}/{a['prefixlen']}" for a in addrs if a["scope"] == "global"}
    assert have == {"10.77.0.2/24", "fd00:77::2/64"}
    assert "10.99.0.0/16 via 10.77.0.1" in ip("-n", name, "route").stdout
    assert len(env.allocated()) == 2
    if version != "0.3.1":
        ok(env.run("CHECK", conf, path, prev=result))
        ip("-n", name, "addr", "del", "10.77.0.2/24", "dev", "eth0")
        err = failed(env.run("CHECK", conf, path, prev=result))
        assert "10.77.0.2/24" in err["msg"]
    ok(env.run("DEL", conf, path, prev=result))
    assert env.allocated() == []
    assert "eth0" not in link_names(name)


def test_tap_enslaved_to_a_bridge_in_the_container(env: Env) -> None:
    name, path = env.container()
    ip("-n", name, "link", "add", "rcnbr0", "type", "bridge")
    conf = env.conf("tap", bridge="rcnbr0")
    result = ok(env.run("ADD", conf, path))
    lk = link_json(name, "eth0")
    assert lk is not None and lk.get("master") == "rcnbr0"
    ok(env.run("CHECK", conf, path, prev=result))
    ip("-n", name, "link", "set", "eth0", "nomaster")
    err = failed(env.run("CHECK", conf, path, prev=result))
    assert "rcnbr0" in err["msg"]


def test_missing_bridge_and_taken_ifname_leave_nothing_behind(env: Env) -> None:
    name, path = env.container()
    conf = env.conf("tap", bridge="rcnnobr", ipam=env.host_local("10.78.0.0/24"))
    failed(env.run("ADD", conf, path))
    assert link_names(name) == ["lo"] and env.allocated() == []
    ip("-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "rcnpeer")
    conf = env.conf("tap", ipam=env.host_local("10.78.0.0/24"))
    err = failed(env.run("ADD", conf, path))
    assert "eth0" in err["msg"]
    assert link_names(name) == ["eth0", "lo", "rcnpeer"] and env.allocated() == []


@pytest.mark.parametrize(("field", "value"), [("owner", -1), ("group", 2**32), ("mtu", 20), ("mac", "zz:zz")])
def test_bad_fields_are_config_errors(env: Env, field: str, value: object) -> None:
    name, path = env.container()
    err = failed(env.run("ADD", env.conf("tap", **{field: value}), path))
    assert err["code"] == 7 and field in err["msg"], err
    assert link_names(name) == ["lo"]


def test_del_after_netns_gone_releases_the_address(env: Env) -> None:
    name, path = env.container()
    conf = env.conf("tap", ipam=env.host_local("10.79.0.0/24"))
    result = ok(env.run("ADD", conf, path))
    assert env.allocated() == ["10.79.0.2"]
    subprocess.run(["ip", "netns", "delete", name], check=True)
    ok(env.run("DEL", conf, path, prev=result))
    assert env.allocated() == []


def test_status_and_gc_forward_to_ipam(env: Env) -> None:
    name, path = env.container()
    conf = env.conf("tap", version="1.1.0", ipam=env.host_local("10.80.0.0/24"))
    result = ok(env.run("ADD", conf, path, container_id="keep"))
    ok(env.run("STATUS", conf, ""))
    gc_conf = {**conf, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    ok(env.run("GC", gc_conf, ""))
    assert env.allocated() == ["10.80.0.2"]  # a valid attachment keeps its address
    ok(env.run("DEL", conf, path, container_id="keep", prev=result))


def test_old_spec_versions_get_their_result_shape(env: Env) -> None:
    _, path = env.container()
    result = ok(env.run("ADD", env.conf("tap", version="0.2.0", ipam=env.host_local("10.80.0.0/24")), path))
    assert result["ip4"]["ip"] == "10.80.0.2/24" and "interfaces" not in result
