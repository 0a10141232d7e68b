"""dummy plugin (kernelvm: this host's kernel has no dummy links). The reference v1.1.1 has no
dummy: results are checked against the HEAD behaviour in cni-facts §2.7."""

from __future__ import annotations

import subprocess

import pytest
from linktest import Env, failed, ip, link_json, link_names, ok

pytestmark = pytest.mark.kernelvm


@pytest.fixture(autouse=True)
def _dummy(need_kind) -> None:
    need_kind("dummy")


def test_add_check_del(env: Env) -> None:
    name, path = env.container()
    conf = env.conf("dummy", ipam=env.host_local("10.71.0.0/24", "fd00:71::/64"),
                    dns={"nameservers": ["10.71.0.53"]})
    result = ok(env.run("ADD", conf, path))
    mac = link_json(name, "eth0")["address"]
    assert result == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": mac, "sandbox": path}],
        "ips": [{"interface": 0, "address": "10.71.0.2/24", "gateway": "10.71.0.1"},
                {"interface": 0, "address": "fd00:71::2/64", "gateway": "fd00:71::1"}],
        "dns": {"nameservers": ["10.71.0.53"]},
    }
    assert link_json(name, "eth0")["linkinfo"]["info_kind"] == "dummy"
    ok(env.run("CHECK", conf, path, prev=result))
    ip("-n", name, "addr", "del", "fd00:71::2/64", "dev", "eth0")
    assert "fd00:71::2" in failed(env.run("CHECK", conf, path, prev=result))["msg"]
    ok(env.run("DEL", conf, path, prev=result))
    ok(env.run("DEL", conf, path, prev=result))
    assert link_names(name) == ["lo"] and env.allocated() == []


def test_requires_ipam_and_a_free_ifname(env: Env) -> None:
    name, path = env.container()
    err = failed(env.run("ADD", env.conf("dummy"), path))
    assert err["code"] == 7 and "IPAM" in err["msg"]
    ip("-n", name, "link", "add", "eth0", "type", "dummy")
    err = failed(env.run("ADD", env.conf("dummy", ipam=env.host_local("10.72.0.0/24")), path))
    assert "eth0" in err["msg"] and env.allocated() == []


def test_del_after_netns_gone(env: Env) -> None:
    name, path = env.container()
    conf = env.conf("dummy", ipam=env.host_local("10.73.0.0/24"))
    result = ok(env.run("ADD", conf, path))
    subprocess.run(["ip", "netns", "delete", name], check=True)
    ok(env.run("DEL", conf, path, prev=result))
    assert env.allocated() == []
