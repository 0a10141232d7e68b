"""CNI_ARGS keys a plugin does not read: refused on ADD unless IgnoreUnknown, as the reference does.

The differential half runs each plugin, ours and the reference (Debian 1.1.1), in a stand-in host
namespace with the same CNI_ARGS and compares whether ADD succeeds; a refused ADD must leave no
link behind in either namespace, and DEL with any keys must succeed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.cni.args import refuse_unknown_args
from reconciler.errors import INVALID_ENVIRONMENT, CNIError
from tests.cnitest import exec_plugin
from tests.conftest import run


@pytest.mark.parametrize("flag", ["1", "true", "TRUE", "True", "t", "T"])
def test_ignore_unknown_true_lets_any_key_through(flag: str) -> None:
    refuse_unknown_args({"IgnoreUnknown": flag, "K8S_POD_NAME": "web"}, ("IP",), "host-local")


@pytest.mark.parametrize("pairs", [{"K8S_POD_NAME": "web"}, {"IgnoreUnknown": "0", "Ip": "10.1.0.5"},
                                   {"IgnoreUnknown": "false", "IP": "10.1.0.5", "MAC": "x"}])
def test_unknown_key_is_named(pairs: dict[str, str]) -> None:
    with pytest.raises(CNIError) as err:
        refuse_unknown_args(pairs, ("IP",), "host-local")
    unknown = next(k for k in pairs if k not in ("IP", "IgnoreUnknown"))
    assert err.value.code == INVALID_ENVIRONMENT
    assert err.value.msg == f"CNI_ARGS: unknown key {unknown!r}"
    assert "host-local reads IP" in err.value.details and "IgnoreUnknown=1" in err.value.details


@pytest.mark.parametrize("flag", ["yes", "", "2"])
def test_ignore_unknown_must_be_a_boolean(flag: str) -> None:
    with pytest.raises(CNIError) as err:
        refuse_unknown_args({"IgnoreUnknown": flag}, ("IP",), "host-local")
    assert err.value.code == INVALID_ENVIRONMENT and "IgnoreUnknown" in err.value.msg


def test_known_keys_alone_pass() -> None:
    refuse_unknown_args({"IP": "10.1.0.5", "GATEWAY": "10.1.0.1"}, ("IP", "GATEWAY"), "static")
    refuse_unknown_args({}, (), "bridge")


# Differential: plugin -> (config, does the reference refuse an unknown key on ADD?)
def _configs(data_dir: Path, ctr: str) -> dict[str, dict[str, Any]]:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": ctr}],
            "ips": [{"address": "10.203.0.5/24", "interface": 0}]}
    host_local = {"type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": "10.203.0.0/24"}]]}
    base = {"cniVersion": "1.0.0", "name": "rcnargs"}
    return {
        "bridge": base | {"type": "bridge", "bridge": "rcnargbr0", "ipam": host_local},
        "ptp": base | {"type": "ptp", "ipam": host_local},
        "macvlan": base | {"type": "macvlan", "master": "rcnargup0"},
        "host-local": base | {"ipam": host_local},
        "static": base | {"ipam": {"type": "static", "addresses": [{"address": "10.203.0.9/24"}]}},
        "tuning": base | {"type": "tuning", "prevResult": prev},
        "portmap": base | {"type": "portmap", "prevResult": prev},
        "loopback": base | {"type": "loopback"},
    }


REFUSING = {"bridge", "ptp", "macvlan", "host-local", "static", "tuning"}


def _links(ns: str) -> list[str]:
    out = run("ip", "-n", ns, "-o", "link", "show").stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())


@pytest.mark.parametrize("plugin", sorted(_configs(Path("/x"), "/x")))
def test_unknown_keys_as_the_reference(plugin: str, plugin_dir: Path, reference_plugins: Path, make_netns,
                                       tmp_path: Path) -> None:
    host, _ = make_netns("rcn-h-")
    run("ip", "-n", host, "link", "add", "rcnargup0", "type", "bridge")
    outcomes: dict[str, list[bool]] = {}
    for impl, directory in (("ours", plugin_dir), ("reference", reference_plugins)):
        ctr, ctr_path = make_netns("rcn-t-")
        conf = _configs(tmp_path / impl, ctr_path)[plugin]
        if "prevResult" in conf:  # a meta plugin: the main plugin's eth0 is already there
            run("ip", "-n", ctr, "link", "add", "eth0", "type", "veth", "peer", "name", "rcnargpeer")

        def call(verb: str, cni_args: str, conf: dict[str, Any] = conf, ctr_path: str = ctr_path,
                 directory: Path = directory) -> Any:
            return exec_plugin(directory / plugin, verb, conf, netns=ctr_path, cni_args=cni_args,
                               netns_exec=host, extra_env={"RECONCILER_PLUGIN_SOCKET": "/dev/null"})

        before = (_links(host), _links(ctr))
        refused = call("ADD", "K8S_POD_NAME=web")
        left = (_links(host), _links(ctr))
        accepted = call("ADD", "IgnoreUnknown=1;K8S_POD_NAME=web")
        outcomes[impl] = [refused.code == 0, accepted.code == 0]
        if impl == "ours":
            assert accepted.code == 0, accepted.stdout + accepted.stderr
            if plugin in REFUSING:
                assert refused.json["code"] == INVALID_ENVIRONMENT, refused.stdout
                assert refused.json["msg"] == "CNI_ARGS: unknown key 'K8S_POD_NAME'"
                assert left == before, "a refused ADD left links behind"
            for _ in range(2):  # DEL reads its args leniently: cleanup never fails over them
                gone = call("DEL", "K8S_POD_NAME=web")
                assert gone.code == 0, gone.stdout + gone.stderr
        else:
            call("DEL", "IgnoreUnknown=1")
    assert outcomes["ours"] == outcomes["reference"]
    assert outcomes["ours"] == [plugin not in REFUSING, True]
