"""vlan plugin (kernelvm: this host's kernel has no 8021q; tests/vm/run.sh runs these for real)."""

from __future__ import annotations

import pytest
from linktest import Env, container_state, failed, ip, link_json, link_names, normalise, ok, ping

pytestmark = pytest.mark.kernelvm


@pytest.fixture(autouse=True)
def _vlan(need_kind) -> None:
    need_kind("vlan")


def _cycle(env: Env, conf: dict, reference: bool) -> tuple[dict, dict]:
    conf = {**conf, "ipam": {**conf["ipam"], "dataDir": str(env.tmp / ("ref" if reference else "ours"))}}
    name, path = env.container()
    result = ok(env.run("ADD", conf, path, reference=reference))
    state = container_state(name)
    ok(env.run("CHECK", conf, path, reference=reference, prev=result))
    ok(env.run("DEL", conf, path, reference=reference, prev=result))
    assert link_names(name) == ["lo"]
    return normalise(result, {path: "SANDBOX"}), state


@pytest.mark.parametrize("mtu", [0, 1400])
def test_same_as_reference(env: Env, parent: str, reference_plugins, mtu: int) -> None:
    ipam = env.host_local("10.61.0.0/24", "fd00:61::/64")
    conf = env.conf("vlan", master=parent, vlanId=42, mtu=mtu, ipam=ipam)
    ref = _cycle(env, conf, reference=True)
    ours = _cycle(env, conf, reference=False)
    assert ours == ref
    eth0 = ours[1]["links"][0]
    assert eth0["kind"] == "vlan" and eth0["data"] == {"protocol": "802.1Q", "id": 42}
    assert eth0["mtu"] == (mtu or 1500)


def test_tagged_traffic_reaches_a_vlan_on_the_host_side(env: Env, parent: str) -> None:
    """Frames leave the container tagged 42 and arrive on a vlan 42 link on the veth peer."""
    ip("-n", env.host, "link", "add", "link", "rcnpar1", "name", "rcnpar1.42", "type", "vlan", "id", "42")
    ip("-n", env.host, "addr", "add", "10.62.0.1/24", "dev", "rcnpar1.42")
    ip("-n", env.host, "link", "set", "rcnpar1.42", "up")
    name, path = env.container()
    ok(env.run("ADD", env.conf("vlan", master=parent, vlanId=42, ipam=env.host_local("10.62.0.0/24")), path))
    assert ping(name, "10.62.0.1")


def test_link_in_container_and_check_drift(env: Env) -> None:
    name, path = env.container()
    ip("-n", name, "link", "add", "rcnm0", "type", "veth", "peer", "name", "rcnm1")
    ip("-n", name, "link", "set", "rcnm0", "up")
    conf = env.conf("vlan", master="rcnm0", vlanId=7, linkInContainer=True, ipam=env.host_local("10.63.0.0/24"))
    result = ok(env.run("ADD", conf, path))
    assert link_json(name, "eth0")["linkinfo"]["info_data"]["id"] == 7
    ok(env.run("CHECK", conf, path, prev=result))
    err = failed(env.run("CHECK", {**conf, "vlanId": 8}, path, prev=result))
    assert "VLAN id" in err["msg"]
    ok(env.run("DEL", conf, path, prev=result))
    ok(env.run("DEL", conf, path, prev=result))
    assert "eth0" not in link_names(name) and env.allocated() == []


@pytest.mark.parametrize(("fields", "code", "needle"), [
    ({"vlanId": 4095}, 7, "VLAN ID"),
    ({"vlanId": -1}, 7, "VLAN ID"),
    ({"master": ""}, 7, "master"),
    ({"mtu": 1600}, 7, "MTU"),
    ({"ipam": {}}, 7, "IPAM"),
])
def test_bad_inputs_leave_nothing(env: Env, parent: str, fields: dict, code: int, needle: str) -> None:
    name, path = env.container()
    conf = env.conf("vlan", **{"master": parent, "vlanId": 5, "ipam": env.host_local("10.64.0.0/24"), **fields})
    err = failed(env.run("ADD", conf, path))
    assert err["code"] == code and needle in err["msg"], err
    assert link_names(name) == ["lo"] and env.allocated() == []
    assert link_names(env.host) == ["lo", "rcnpar0", "rcnpar1"]
