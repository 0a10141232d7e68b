"""libcni semantics of the chain runner, observed through a recording plugin exec'd for real."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from reconciler.cni import cache
from reconciler.cni.chain import Runner, RuntimeConf
from reconciler.cni.conf import conflist_from_bytes, load_network
from reconciler.errors import CNIError

FIXTURE = Path(__file__).parent.parent / "fixtures" / "recorder"


@pytest.fixture
def env(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("rec-a", "rec-b", "rec-c"):
        shutil.copy(FIXTURE, bindir / name)
    record = tmp_path / "record"
    record.mkdir()
    monkeypatch.setenv("RECORD_DIR", str(record))
    return bindir, record, tmp_path / "cache"


def calls(record: Path) -> list[dict]:
    out = []
    for p in sorted(record.iterdir(), key=lambda p: int(p.name.split("-")[0])):
        out.append(json.loads(p.read_text()))
        p.unlink()
    return out


def netlist(version: str = "1.1.0", **extra) -> bytes:
    return json.dumps({
        "cniVersion": version, "name": "rcn-chain", **extra,
        "plugins": [
            {"type": "rec-a", "tag": "a", "capabilities": {"portMappings": True}},
            {"type": "rec-b", "tag": "b", "capabilities": {"bandwidth": True, "portMappings": False}},
            {"type": "rec-c", "tag": "c", "unknownKey": [1, 2]},
        ],
    }).encode()


RT = RuntimeConf("ctr-1", "/run/netns/x", "eth0", (("K", "V"),), {"portMappings": [{"hostPort": 1}], "bandwidth": {"ingressRate": 1}})


def test_add_order_prevresult_and_capabilities(env) -> None:
    bindir, record, cache_dir = env
    runner = Runner([str(bindir)], str(cache_dir))
    result = runner.add(conflist_from_bytes(netlist()), RT)
    assert [i.name for i in result.interfaces] == ["a", "b", "c"]
    a, b, c = calls(record)
    assert [x["stdin"]["tag"] for x in (a, b, c)] == ["a", "b", "c"]
    assert "prevResult" not in a["stdin"]
    assert [i["name"] for i in b["stdin"]["prevResult"]["interfaces"]] == ["a"]
    # runtimeConfig only for declared, true capabilities
    assert a["stdin"]["runtimeConfig"] == {"portMappings": [{"hostPort": 1}]}
    assert b["stdin"]["runtimeConfig"] == {"bandwidth": {"ingressRate": 1}}
    assert "runtimeConfig" not in c["stdin"]
    assert c["stdin"]["unknownKey"] == [1, 2]  # plugin-specific fields pass through
    assert a["env"]["CNI_ARGS"] == "K=V" and a["env"]["CNI_COMMAND"] == "ADD"
    assert all(x["stdin"]["name"] == "rcn-chain" and x["stdin"]["cniVersion"] == "1.1.0" for x in (a, b, c))


def test_del_reverse_with_cached_result_then_cache_removed(env) -> None:
    bindir, record, cache_dir = env
    runner = Runner([str(bindir)], str(cache_dir))
    nl = conflist_from_bytes(netlist())
    runner.add(nl, RT)
    calls(record)
    runner.check(nl, RT)
    checks = calls(record)
    assert [x["stdin"]["tag"] for x in checks] == ["a", "b", "c"]
    assert [i["name"] for i in checks[0]["stdin"]["prevResult"]["interfaces"]] == ["a", "b", "c"]
    runner.delete(nl, RT)
    dels = calls(record)
    assert [x["stdin"]["tag"] for x in dels] == ["c", "b", "a"]
    assert all(len(x["stdin"]["prevResult"]["interfaces"]) == 3 for x in dels)
    assert cache.read(cache_dir, "rcn-chain", "ctr-1", "eth0") is None
    runner.delete(nl, RT)  # DEL again: no cache, no prevResult, still fine
    assert all("prevResult" not in x["stdin"] for x in calls(record))


def test_failed_add_names_the_plugin(env) -> None:
    bindir, record, cache_dir = env
    data = json.loads(netlist())
    data["plugins"][1]["fail"] = True
    with pytest.raises(CNIError) as err:
        Runner([str(bindir)], str(cache_dir)).add(conflist_from_bytes(json.dumps(data).encode()), RT)
    assert err.value.code == 11 and "type='rec-b' failed (add)" in err.value.msg
    assert cache.read(cache_dir, "rcn-chain", "ctr-1", "eth0") is None


def test_roll_back_deletes_only_what_the_failed_add_made(env) -> None:
    """With roll_back (the reconciler's ADDs), a failed chain DELs the plugins whose ADD succeeded,
    in reverse with the result they made, and the failing one only if it was exec'd: a plugin of
    ours undoes its own failed ADD, and its DEL would remove what was there before it."""
    bindir, record, cache_dir = env
    runner = Runner([str(bindir)], str(cache_dir))
    data = json.loads(netlist())
    data["plugins"][1]["fail"] = True
    failing_exec = conflist_from_bytes(json.dumps(data).encode())
    with pytest.raises(CNIError):
        runner.add_cached(failing_exec, RT)  # libcni's semantics: the caller DELs
    assert [(x["env"]["CNI_COMMAND"], x["stdin"]["tag"]) for x in calls(record)] == [("ADD", "a"), ("ADD", "b")]
    with pytest.raises(CNIError):
        runner.add_cached(failing_exec, RT, roll_back=True)
    got = calls(record)
    assert [(x["env"]["CNI_COMMAND"], x["stdin"]["tag"]) for x in got] == [
        ("ADD", "a"), ("ADD", "b"), ("DEL", "b"), ("DEL", "a")]
    assert [i["name"] for i in got[3]["stdin"]["prevResult"]["interfaces"]] == ["a"]

    ours_failing = {"cniVersion": "1.1.0", "name": "rcn-chain", "plugins": [
        {"type": "rec-a", "tag": "a"}, {"type": "tuning", "sysctl": {"kernel.hostname": "x"}}]}
    with pytest.raises(CNIError, match="type='tuning' failed"):
        runner.add_cached(conflist_from_bytes(json.dumps(ours_failing).encode()), RuntimeConf("ctr-1", "/run/netns/x"),
                          roll_back=True)
    assert [(x["env"]["CNI_COMMAND"], x["stdin"]["tag"]) for x in calls(record)] == [("ADD", "a"), ("DEL", "a")]
    assert cache.read(cache_dir, "rcn-chain", "ctr-1", "eth0") is None


def test_disable_check_and_old_versions(env) -> None:
    bindir, record, cache_dir = env
    runner = Runner([str(bindir)], str(cache_dir))
    nl = conflist_from_bytes(netlist(disableCheck="true"))
    runner.add(nl, RT)
    calls(record)
    runner.check(nl, RT)
    assert calls(record) == []
    old = conflist_from_bytes(netlist("0.3.1"))
    with pytest.raises(CNIError, match="does not support the CHECK"):
        runner.check(old, RT)


def test_gc_deletes_stale_then_sends_valid_attachments(env) -> None:
    bindir, record, cache_dir = env
    runner = Runner([str(bindir)], str(cache_dir))
    nl = conflist_from_bytes(netlist())
    keep = RuntimeConf("ctr-keep", "/run/netns/k", "eth0")
    runner.add(nl, RT)
    runner.add(nl, keep)
    calls(record)
    assert runner.gc(nl, [("ctr-keep", "eth0")]) == []
    seen = calls(record)
    dels = [x for x in seen if x["env"]["CNI_COMMAND"] == "DEL"]
    gcs = [x for x in seen if x["env"]["CNI_COMMAND"] == "GC"]
    assert {x["env"]["CNI_CONTAINERID"] for x in dels} == {"ctr-1"}
    assert len(gcs) == 3
    assert gcs[0]["stdin"]["cni.dev/valid-attachments"] == [{"containerID": "ctr-keep", "ifname": "eth0"}]
    assert gcs[0]["stdin"]["cni.dev/attachments"] == gcs[0]["stdin"]["cni.dev/valid-attachments"]
    assert [e.container_id for e in cache.list_entries(cache_dir, "rcn-chain")] == ["ctr-keep"]
    assert runner.gc(conflist_from_bytes(netlist(disableGC=True)), []) == []
    assert calls(record) == []


def test_status_only_from_11(env) -> None:
    bindir, record, cache_dir = env
    runner = Runner([str(bindir)], str(cache_dir))
    runner.status(conflist_from_bytes(netlist("1.0.0")))
    assert calls(record) == []
    runner.status(conflist_from_bytes(netlist()))
    assert [x["env"]["CNI_COMMAND"] for x in calls(record)] == ["STATUS"] * 3


def test_load_network_libcni_rules(tmp_path) -> None:
    d = tmp_path
    (d / "20-b.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "n1", "plugins": [{"type": "second"}]}))
    (d / "10-a.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "n1", "plugins": [{"type": "first"}]}))
    (d / "n1").mkdir()
    (d / "n1" / "b.conf").write_text(json.dumps({"type": "sib-b"}))
    (d / "n1" / "a.conf").write_text(json.dumps({"type": "sib-a"}))
    (d / "legacy.conf").write_text(json.dumps({"name": "old", "type": "bridge"}))
    nl = load_network(d, "n1")
    assert [p["type"] for p in nl.plugins] == ["first", "sib-a", "sib-b"]
    (d / "10-a.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "n1", "loadOnlyInlinedPlugins": True, "plugins": [{"type": "first"}]}))
    assert [p["type"] for p in load_network(d, "n1").plugins] == ["first"]
    legacy = load_network(d, "old")
    assert legacy.cni_version == "0.1.0" and legacy.plugins[0]["type"] == "bridge"
    with pytest.raises(CNIError, match="no net configuration"):
        load_network(d, "missing")


def test_cni_versions_negotiation_and_errors() -> None:
    nl = conflist_from_bytes(json.dumps(
        {"cniVersion": "0.4.0", "cniVersions": ["1.0.0", "1.1.0", "9.0.0"], "name": "n", "plugins": [{"type": "t"}]}).encode())
    assert nl.cni_version == "1.1.0"
    for bad, words in [
        ({"name": "n", "plugins": []}, "empty plugins"),
        ({"name": "n", "plugins": {}}, "not a list"),
        ({"name": "n", "plugins": [{"notype": 1}]}, "plugins.0.type"),
        ({"name": "bad name!", "plugins": [{"type": "t"}]}, "name"),
        ({"name": "n", "disableCheck": "maybe", "plugins": [{"type": "t"}]}, "disableCheck"),
    ]:
        with pytest.raises(CNIError) as err:
            conflist_from_bytes(json.dumps(bad).encode(), "f.conflist")
        assert err.value.code == 7 and words in err.value.msg and "f.conflist" in err.value.msg


def test_case_insensitive_keys() -> None:
    nl = conflist_from_bytes(json.dumps({"CNIVersion": "1.0.0", "NAME": "n", "DisableCheck": True,
                                         "plugins": [{"type": "t"}]}).encode())
    assert (nl.cni_version, nl.name, nl.disable_check) == ("1.0.0", "n", True)


def test_cache_permissions_and_listing(tmp_path) -> None:
    entry = cache.CacheEntry("c1", "net", "eth0", "/run/netns/a", b"{}", [("a", "b")], {"x": 1}, {"cniVersion": "1.0.0"})
    path = cache.write(tmp_path, entry)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    (tmp_path / "results" / "legacy-x-eth0").write_text(json.dumps({"cniVersion": "0.3.1"}))
    assert [e.container_id for e in cache.list_entries(tmp_path)] == ["c1"]
    assert cache.read(tmp_path, "legacy", "x", "eth0").result == {"cniVersion": "0.3.1"}
    assert os.stat(tmp_path / "results").st_mode & 0o777 == 0o700
