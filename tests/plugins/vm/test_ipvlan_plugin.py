"""ipvlan plugin (kernelvm: this host's kernel has no ipvlan; tests/vm/run.sh runs these for real)."""

from __future__ import annotations

import subprocess

import pytest
from linktest import Env, container_state, failed, ip, link_json, link_names, normalise, ok, ping

pytestmark = pytest.mark.kernelvm


@pytest.fixture(autouse=True)
def _ipvlan(need_kind) -> None:
    need_kind("ipvlan")


def _cycle(env: Env, conf: dict, reference: bool, prev_in: dict | None = None) -> tuple[dict, dict]:
    """ADD, CHECK, DEL in a fresh container with a store per implementation; returns (result, state)."""
    if "ipam" in conf:
        conf = {**conf, "ipam": {**conf["ipam"], "dataDir": str(env.tmp / ("ref" if reference else "ours"))}}
    name, path = env.container()
    result = ok(env.run("ADD", conf, path, reference=reference, prev=prev_in))
    state = container_state(name)
    ok(env.run("CHECK", conf, path, reference=reference, prev=result))
    ok(env.run("DEL", conf, path, reference=reference, prev=result))
    assert link_names(name) == ["lo"]
    return normalise(result, {path: "SANDBOX"}), state


@pytest.mark.parametrize("mode", ["l2", "l3", "l3s"])
def test_same_as_reference(env: Env, parent: str, reference_plugins, mode: str) -> None:
    ipam = env.host_local("10.91.0.0/24", routes=[{"dst": "10.97.0.0/16", "gw": "10.91.0.1"}])
    conf = env.conf("ipvlan", master=parent, mode=mode, mtu=1400, ipam=ipam)
    ref = _cycle(env, conf, reference=True)
    ours = _cycle(env, conf, reference=False)
    assert ours == ref
    assert ours[1]["links"][0]["kind"] == "ipvlan" and ours[1]["links"][0]["mtu"] == 1400
    assert link_json(env.host, parent) is not None


def test_chained_without_ipam_takes_ips_from_prev_result(env: Env, parent: str, reference_plugins) -> None:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": parent}],
            "ips": [{"address": "10.92.0.5/24", "gateway": "10.92.0.1", "interface": 0}]}
    conf = env.conf("ipvlan", master=parent)
    ref = _cycle(env, conf, reference=True, prev_in=prev)
    ours = _cycle(env, conf, reference=False, prev_in=prev)
    assert ours == ref
    assert ours[0]["interfaces"] == [{"name": "eth0", "mac": "MAC", "sandbox": "SANDBOX"}]
    assert ("eth0", "10.92.0.5/24") in ours[1]["addrs"]


def test_chained_master_from_prev_result(env: Env, parent: str) -> None:
    """HEAD behaviour (v1.1.1 requires `master`): the prevResult's single interface is the master."""
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": parent}],
            "ips": [{"address": "10.92.0.6/24", "interface": 0}]}
    result, state = _cycle(env, env.conf("ipvlan"), reference=False, prev_in=prev)
    assert ("eth0", "10.92.0.6/24") in state["addrs"] and state["links"][0]["kind"] == "ipvlan"


def test_chained_master_needs_a_single_interface(env: Env, parent: str) -> None:
    _, path = env.container()
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": parent}, {"name": "rcnpar1"}],
            "ips": [{"address": "10.92.0.5/24", "interface": 0}]}
    err = failed(env.run("ADD", env.conf("ipvlan"), path, prev=prev))
    assert "chained master failure" in err["msg"]


def test_l2_containers_reach_each_other(env: Env, parent: str) -> None:
    conf = env.conf("ipvlan", master=parent, ipam=env.host_local("10.93.0.0/24"))
    a, path_a = env.container()
    b, path_b = env.container()
    ra = ok(env.run("ADD", conf, path_a, container_id="a"))
    rb = ok(env.run("ADD", conf, path_b, container_id="b"))
    assert ping(a, rb["ips"][0]["address"].split("/")[0])
    assert ping(b, ra["ips"][0]["address"].split("/")[0])


def test_link_in_container(env: Env) -> None:
    name, path = env.container()
    ip("-n", name, "link", "add", "rcnm0", "type", "veth", "peer", "name", "rcnm1")
    ip("-n", name, "link", "set", "rcnm0", "up")
    conf = env.conf("ipvlan", master="rcnm0", linkInContainer=True, mode="l3", ipam=env.host_local("10.94.0.0/24"))
    result = ok(env.run("ADD", conf, path))
    lk = link_json(name, "eth0")
    assert lk is not None and lk["linkinfo"]["info_kind"] == "ipvlan" and lk["linkinfo"]["info_data"]["mode"] == "l3"
    ok(env.run("CHECK", conf, path, prev=result))
    ok(env.run("DEL", conf, path, prev=result))
    assert "eth0" not in link_names(name) and "rcnm0" in link_names(name)


def test_check_reports_drift(env: Env, parent: str) -> None:
    name, path = env.container()
    conf = env.conf("ipvlan", master=parent, ipam=env.host_local("10.95.0.0/24"))
    result = ok(env.run("ADD", conf, path))
    err = failed(env.run("CHECK", {**conf, "mode": "l3"}, path, prev=result))
    assert "mode" in err["msg"]
    ip("-n", name, "addr", "flush", "dev", "eth0")
    err = failed(env.run("CHECK", conf, path, prev=result))
    assert "10.95.0.2" in err["msg"]


@pytest.mark.parametrize(("fields", "code", "needle"), [
    ({"mode": "l4"}, 7, "mode"),
    ({"mtu": 9000}, 7, "MTU"),
    ({"master": "rcnnosuch"}, 999, "rcnnosuch"),
])
def test_bad_inputs_leave_nothing(env: Env, parent: str, fields: dict, code: int, needle: str) -> None:
    name, path = env.container()
    conf = env.conf("ipvlan", **{"master": parent, **fields}, ipam=env.host_local("10.96.0.0/24"))
    err = failed(env.run("ADD", conf, path))
    assert err["code"] == code and needle in err["msg"], err
    assert link_names(name) == ["lo"] and env.allocated() == []


def test_no_master_and_no_default_route(env: Env, parent: str) -> None:
    _, path = env.container()
    err = failed(env.run("ADD", env.conf("ipvlan", ipam=env.host_local("10.96.0.0/24")), path))
    assert err["code"] == 7 and "master" in err["msg"]


def test_ifname_taken_then_del_twice_and_after_netns_gone(env: Env, parent: str) -> None:
    name, path = env.container()
    conf = env.conf("ipvlan", master=parent, ipam=env.host_local("10.96.0.0/24"))
    result = ok(env.run("ADD", conf, path))
    failed(env.run("ADD", conf, path))  # eth0 exists: error, and the first attachment survives
    assert link_json(name, "eth0") is not None and env.allocated() == ["10.96.0.2"]
    ok(env.run("DEL", conf, path, prev=result))
    ok(env.run("DEL", conf, path, prev=result))
    ok(env.run("ADD", conf, path))
    subprocess.run(["ip", "netns", "delete", name], check=True)
    ok(env.run("DEL", conf, path, prev=result))
    assert env.allocated() == []
