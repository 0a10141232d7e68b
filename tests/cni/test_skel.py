"""The exec protocol: every verb's bad inputs give the right code and a message naming the problem."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.cni.registry import implemented
from reconciler.cni.skel import run
from tests.cnitest import exec_plugin
from tests.plugins.main.maintest import ip_json

pytestmark = pytest.mark.skipif("loopback" not in implemented(), reason="loopback plugin not built yet")

CONF = {"cniVersion": "1.0.0", "name": "rcn-skel", "type": "loopback"}


def env(**kw: str) -> dict[str, str]:
    base = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/none",
            "CNI_IFNAME": "lo", "CNI_PATH": "/nonexistent"}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def answer(environ: dict[str, str], stdin: bytes | dict = CONF) -> tuple[int, dict]:
    data = json.dumps(stdin).encode() if isinstance(stdin, dict) else stdin
    code, out = run("loopback", environ, data)
    return code, json.loads(out) if out else {}


@pytest.mark.parametrize(
    ("environ", "code", "words"),
    [
        (env(CNI_COMMAND="BOGUS"), 4, "unknown CNI_COMMAND"),
        (env(CNI_CONTAINERID=None), 4, "CNI_CONTAINERID"),
        (env(CNI_IFNAME=None), 4, "CNI_IFNAME"),
        (env(CNI_PATH=None), 4, "CNI_PATH"),
        (env(CNI_NETNS=None), 4, "CNI_NETNS"),
        (env(CNI_CONTAINERID="bad id!"), 4, "containerID"),
        (env(CNI_IFNAME="x" * 16), 4, "too long"),
        (env(CNI_IFNAME="a/b"), 4, "/"),
        (env(CNI_IFNAME=".."), 4, "."),
        (env(CNI_IFNAME="a b"), 4, "whitespace"),
        (env(), 8, "/run/netns/none"),
        (env(CNI_NETNS="/dev/null"), 8, "'/dev/null': not a network namespace"),
        (env(CNI_NETNS="/dev/null", CNI_COMMAND="CHECK"), 8, "not a network namespace"),
    ],
)
def test_bad_environment(environ: dict[str, str], code: int, words: str) -> None:
    got, out = answer(environ)
    assert got == 1
    assert out["code"] == code
    assert words in out["msg"] + out.get("details", "")


@pytest.mark.parametrize(
    ("stdin", "code", "words"),
    [
        (b"{not json", 6, "parsing"),
        (b"[1, 2]", 6, "not a JSON object"),
        (b"", 6, "parsing"),  # no config is not an empty one
        ({"cniVersion": 1.0, "name": "n", "type": "loopback"}, 6, "cniVersion: must be a string, not a number"),
        ({"cniVersion": "1.0.0", "name": 5, "type": "loopback"}, 6, "name: must be a string"),
        ({"cniVersion": "1.0.0", "Name": ["n"], "type": "loopback"}, 6, "Name: must be a string, not an array"),
        ({"cniVersion": "1.0.0", "name": "n", "type": "loopback", "prevResult": "x"}, 6, "prevResult: must be an object"),
        ({"cniVersion": "1.0.0", "name": "n", "type": "loopback", "capabilities": "x"}, 6, "capabilities"),
        ({"cniVersion": "7.7.7", "name": "n", "type": "loopback"}, 1, "7.7.7"),
        ({"cniVersion": "1.0.0", "name": "", "type": "loopback"}, 7, "network name"),
        ({"cniVersion": "1.0.0", "name": "bad name", "type": "loopback"}, 7, "network name"),
        ({"cniVersion": "0.3.1", "name": "n", "type": "loopback"}, 1, "CHECK"),
    ],
)
def test_bad_config(stdin, code: int, words: str, netns: str) -> None:
    command = "CHECK" if code == 1 and words == "CHECK" else "ADD"
    got, out = answer(env(CNI_COMMAND=command, CNI_NETNS=netns), stdin)
    assert got == 1 and out["code"] == code
    assert words in out["msg"] + out.get("details", "")


@pytest.mark.parametrize("verb", ["GC", "STATUS"])
def test_gc_status_need_11(verb: str) -> None:
    got, out = answer(env(CNI_COMMAND=verb), {"cniVersion": "1.0.0", "name": "n", "type": "loopback"})
    assert got == 1 and out["code"] == 1 and verb in out["msg"]


def test_version_reports_supported_versions() -> None:
    got, out = answer({"CNI_COMMAND": "VERSION"}, b"")
    assert got == 0
    assert out["cniVersion"] == "1.1.0" and "0.1.0" in out["supportedVersions"] and "1.1.0" in out["supportedVersions"]


def test_del_without_netns_succeeds() -> None:
    got, out = answer(env(CNI_COMMAND="DEL", CNI_NETNS="/run/netns/rcn-gone-for-good"))
    assert (got, out) == (0, {})


def test_exec_no_command_prints_about_to_stderr(plugin_dir) -> None:
    proc = subprocess.run([str(plugin_dir / "loopback")], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if not k.startswith("CNI_")})
    assert proc.returncode == 0 and proc.stdout == ""
    assert "CNI protocol versions supported" in proc.stderr


def test_exec_error_goes_to_stdout_as_json(plugin_dir) -> None:
    res = exec_plugin(plugin_dir / "loopback", "ADD", b"{oops", netns="/run/netns/x")
    assert res.code == 1
    assert res.json["code"] == 6


def test_exec_matches_in_process(plugin_dir, netns) -> None:
    res = exec_plugin(plugin_dir / "loopback", "ADD", CONF, netns=netns, ifname="lo")
    code, out = run("loopback", env(CNI_NETNS=netns), json.dumps(CONF).encode())
    assert res.code == code == 0
    assert res.json == json.loads(out)


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
CONFIGS = st.fixed_dictionaries(
    {},
    optional={
        "cniVersion": st.sampled_from(["0.1.0", "0.3.1", "1.0.0", "1.1.0", "", "x"]) | st.text(max_size=5),
        "name": st.text(max_size=10),
        "type": st.just("loopback") | st.text(max_size=5),
        "prevResult": JSON,
        "runtimeConfig": JSON,
    },
).map(lambda d: json.dumps(d).encode()) | st.binary(max_size=40)
ENVS = st.fixed_dictionaries(
    {"CNI_COMMAND": st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "", "x"])},
    optional={
        "CNI_CONTAINERID": st.text(max_size=12),
        "CNI_NETNS": st.sampled_from(["", "/run/netns/rcn-none", "/proc/self/ns/net", "/etc/passwd"]),
        "CNI_IFNAME": st.text(max_size=18),
        "CNI_PATH": st.just("/nonexistent"),
        "CNI_ARGS": st.text(max_size=20),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(environ=ENVS, stdin=CONFIGS)
def test_fuzz_answer_is_result_or_error(environ: dict[str, str], stdin: bytes) -> None:
    """Arbitrary env and stdin: always a result or a well-formed CNI error; nothing created."""
    if environ.get("CNI_NETNS") == "/proc/self/ns/net" and environ.get("CNI_COMMAND") in ("ADD", "DEL"):
        environ = dict(environ, CNI_NETNS="/run/netns/rcn-none")  # never let fuzzing touch the host's own lo
    before = _links()
    code, out = run("loopback", environ, stdin)
    if code == 0:
        assert out == "" or isinstance(json.loads(out), dict)
    else:
        err = json.loads(out)
        assert isinstance(err["code"], int) and isinstance(err["msg"], str) and err["msg"]
        assert err["code"] != 999, err
    assert _links() == before  # loopback can only touch links; namespaces are never created by a plugin


def _link_names(ns: str) -> set[str]:
    return {link["ifname"] for link in ip_json(ns, "link", "show")}


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0"])
@pytest.mark.parametrize("plugin", ["bridge", "host-device"])
def test_add_whose_result_cannot_be_returned_is_rolled_back(plugin: str, version: str, make_netns) -> None:
    """A 0.1.0/0.2.0 result must carry an IP address. When an ADD without IPAM made the interface but
    its result cannot be written in the config's version, the caller gets code 1 and the ADD is
    undone (the reference 1.1.1 answers 999 and leaves the interface in the container)."""
    host, _ = make_netns("rcn-h-")
    ctr, ctr_path = make_netns("rcn-t-")
    subprocess.run(["ip", "-n", host, "link", "add", "rcnrbdev0", "type", "veth", "peer", "name", "rcnrbdev1"],
                   check=True)
    conf = {"cniVersion": version, "name": "rcn-rollback", "type": plugin}
    conf.update({"bridge": "rcnrbbr0"} if plugin == "bridge" else {"device": "rcnrbdev0"})
    before = _link_names(host)
    environ = env(CNI_NETNS=ctr_path, CNI_IFNAME="eth0", RECONCILER_HOST_NETNS=f"/run/netns/{host}")
    code, out = run(plugin, environ, json.dumps(conf).encode())
    error = json.loads(out)
    assert code == 1 and error["code"] == 1, error
    assert version in error["msg"] and "no valid IP addresses" in error["msg"], error
    assert _link_names(ctr) == {"lo"}
    assert _link_names(host) - before <= {"rcnrbbr0"}  # the bridge stays, as it does after a DEL
    assert before <= _link_names(host)  # host-device's device is back on the host
    code, out = run(plugin, {**environ, "CNI_COMMAND": "DEL"}, json.dumps(conf).encode())
    assert (code, out) == (0, "")
