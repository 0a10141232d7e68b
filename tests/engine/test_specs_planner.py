"""Spec loading, cross-checks and the pure planner: no kernel, no root."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.engine.inventory import Record
from reconciler.engine.planner import make_plan
from reconciler.engine.specs import load_specs, network_hash


def net(d: Path, name: str, subnet: str, bridge: str = "rcnb0", file: str | None = None) -> Path:
    conf = {"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "bridge", "bridge": bridge, "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]}}]}
    path = d / (file or f"{name}.conflist")
    path.write_text(json.dumps(conf))
    return path


def att_toml(*items: str) -> str:
    return "\n".join(f"[[attachment]]\n{body}\n" for body in items)


def test_valid_directory_and_provenance(tmp_path):
    net(tmp_path, "n1", "10.50.0.0/24")
    (tmp_path / "a.toml").write_text(att_toml('id = "a"\nnetwork = "n1"\nnetns = "rcn-a"',
                                              'id = "b"\nnetwork = "n1"\nnetns = "/proc/1/ns/net"\nifname = "net1"'))
    specs = load_specs(tmp_path)
    assert not specs.errors
    assert set(specs.attachments) == {"n1/a/eth0", "n1/b/net1"}
    a = specs.attachments["n1/a/eth0"]
    assert a.file.endswith("a.toml") and a.line == 1 and a.owns_netns and a.netns_path == "/run/netns/rcn-a"
    assert specs.attachments["n1/b/net1"].line == 6 and not specs.attachments["n1/b/net1"].owns_netns


def test_errors_name_file_field_and_line(tmp_path):
    net(tmp_path, "n1", "10.50.0.0/24")
    (tmp_path / "bad.toml").write_text('[[attachment]]\nid = "a"\nnetwork = "n1"\nnetns = "x"\nifname = "way-too-long-name0"\n')
    (tmp_path / "syntax.toml").write_text('[[attachment]]\nid = "a"\nnetns = = 3\n')
    (tmp_path / "broken.conflist").write_text('{"name": "n2", "cniVersion": "1.0.0", "plugins": [{"bridge": "x"}]}')
    specs = load_specs(tmp_path)
    text = "\n".join(str(e) for e in specs.errors)
    assert "bad.toml:5: attachment[0].ifname:" in text
    assert "syntax.toml:3:" in text and "invalid TOML" in text
    assert "broken.conflist" in text and "plugins.0.type" in text
    assert str(tmp_path / "syntax.toml") in specs.broken_files
    assert str(tmp_path / "bad.toml") in specs.broken_files  # its records are never pruned
    assert "n1/a/way-too-long-name0" in specs.protected_keys


def test_cross_checks(tmp_path):
    net(tmp_path, "n1", "10.50.0.0/24", bridge="rcnb1")
    net(tmp_path, "n2", "10.50.0.128/25", bridge="rcnb2")  # overlaps n1 on another bridge
    net(tmp_path, "n3", "10.50.0.0/24", bridge="rcnb1", file="same-bridge.conflist")  # same bridge: fine
    net(tmp_path, "n1", "10.60.0.0/24", file="zz-dup.conflist")  # duplicate name
    pm = 'capabilities = { portMappings = [{ hostPort = 80, containerPort = 80, protocol = "tcp" }] }'
    (tmp_path / "a.toml").write_text(att_toml(
        f'id = "a"\nnetwork = "n1"\nnetns = "ns1"\n{pm}',
        'id = "a"\nnetwork = "n1"\nnetns = "ns9"',  # duplicate identity
        'id = "b"\nnetwork = "n3"\nnetns = "ns1"',  # eth0 in ns1 claimed twice
        f'id = "c"\nnetwork = "n3"\nnetns = "ns2"\n{pm}',  # hostPort 80/tcp claimed twice
        'id = "d"\nnetwork = "ghost"\nnetns = "ns3"',
    ))
    specs = load_specs(tmp_path)
    text = "\n".join(str(e) for e in specs.errors)
    assert "overlaps" in text and "n2.conflist" in text
    assert "zz-dup.conflist: name: network 'n1' is already defined" in text
    assert "attachment n1/a/eth0 is already defined" in text
    assert "eth0 in netns ns1 is already claimed by n1/a/eth0" in text
    assert "hostPort 80/tcp on * is already claimed by n1/a/eth0" in text
    assert "unknown network 'ghost'" in text
    assert set(specs.attachments) == {"n1/a/eth0"}
    assert {"n3/b/eth0", "n3/c/eth0", "ghost/d/eth0"} <= specs.protected_keys


def _record(specs, key: str, **kw) -> Record:
    att = specs.attachments[key]
    network = specs.networks[att.network]
    base = dict(key=key, network=att.network, id=att.id, ifname=att.ifname, netns=att.netns,
                netns_path=att.netns_path, owns_netns=True, file=att.file, network_file=network.source,
                fingerprint=att.fingerprint(network), ips=["10.50.0.2/24"], network_hash=network_hash(network))
    base.update(kw)
    return Record(**base)


def test_planner_decisions(tmp_path):
    net(tmp_path, "n1", "10.50.0.0/24")
    (tmp_path / "a.toml").write_text(att_toml(*[f'id = "{i}"\nnetwork = "n1"\nnetns = "ns-{i}"' for i in "abcde"]))
    specs = load_specs(tmp_path)
    records = {k: _record(specs, k) for k in ("n1/a/eth0", "n1/b/eth0", "n1/c/eth0", "n1/d/eth0")}
    records["n1/b/eth0"].fingerprint = "old"
    records["n1/b/eth0"].network_hash = "old"
    gone = Record("n1/z/eth0", "n1", "z", "eth0", "ns-z", "/run/netns/ns-z", True, "a.toml", "n1.conflist", "f")
    records[gone.key] = gone
    drift = {"n1/c/eth0": ["interface eth0 missing in netns ns-c"], "n1/d/eth0": ["bridge rcnb0 missing"]}
    plan = make_plan(specs, records, drift, {"ns-z", "ns-a"}, {"ns-a", "ns-z"}, {"n1/d/eth0": 100.0}, now=50.0)
    kinds = {s.key: s.kind for s in plan.steps}
    assert kinds == {"n1/a/eth0": "noop", "n1/b/eth0": "replace", "n1/c/eth0": "repair",
                     "n1/d/eth0": "backoff", "n1/e/eth0": "add", "n1/z/eth0": "delete"}
    assert [s.kind for s in plan.actions] == ["delete", "replace", "repair", "add"]
    assert "network n1 changed" in next(s.why for s in plan.steps if s.kind == "replace")
    assert plan.delete_namespaces == ["ns-z"]
    assert "ns-e" in plan.create_namespaces and "ns-a" not in plan.create_namespaces
    assert plan.has_changes and json.dumps(plan.to_json())


def test_planner_never_prunes_what_a_broken_file_described(tmp_path):
    net(tmp_path, "n1", "10.50.0.0/24")
    (tmp_path / "a.toml").write_text(att_toml('id = "a"\nnetwork = "n1"\nnetns = "ns-a"'))
    specs = load_specs(tmp_path)
    rec = _record(specs, "n1/a/eth0")
    (tmp_path / "a.toml").write_text("[[attachment]\nid = ")
    broken = load_specs(tmp_path)
    plan = make_plan(broken, {rec.key: rec}, {}, {"ns-a"}, {"ns-a"})
    assert [s.kind for s in plan.steps] == ["kept"] and not plan.delete_namespaces
    # the network file broken instead: same
    (tmp_path / "a.toml").write_text(att_toml('id = "a"\nnetwork = "n1"\nnetns = "ns-a"'))
    (tmp_path / "n1.conflist").write_text("{")
    plan = make_plan(load_specs(tmp_path), {rec.key: rec}, {}, {"ns-a"}, {"ns-a"})
    assert [s.kind for s in plan.steps] == ["kept"]


def test_planner_prunes_nothing_while_an_attachments_file_is_broken(tmp_path):
    """Entries move between files, and a record names the file its entry came from: an entry moved
    into a file that is broken (one commit: `b` moved from a.toml to b.toml, b.toml invalid) must be
    kept, so while any attachments file fails to load nothing is pruned. A broken network file holds
    no entries: the removal of an entry from a file that loads is still pruned then."""
    net(tmp_path, "n1", "10.50.0.0/24")
    net(tmp_path, "n2", "10.51.0.0/24", bridge="rcnb1")
    (tmp_path / "a.toml").write_text(att_toml('id = "a"\nnetwork = "n1"\nnetns = "ns-a"',
                                              'id = "b"\nnetwork = "n1"\nnetns = "ns-b"'))
    specs = load_specs(tmp_path)
    records = {k: _record(specs, k) for k in specs.attachments}
    (tmp_path / "a.toml").write_text(att_toml('id = "a"\nnetwork = "n1"\nnetns = "ns-a"'))
    (tmp_path / "b.toml").write_text(att_toml('id = "b"\nnetwork = "n1"\nnetns = "ns-b"') + "broken [[\n")
    plan = make_plan(load_specs(tmp_path), records, {}, {"ns-a", "ns-b"}, {"ns-a", "ns-b"})
    kept = [s for s in plan.steps if s.kind == "kept"]
    assert [s.key for s in kept] == ["n1/b/eth0"] and "b.toml fails to load" in kept[0].why
    assert not plan.actions and not plan.delete_namespaces
    (tmp_path / "b.toml").unlink()
    (tmp_path / "n2.conflist").write_text("{")
    plan = make_plan(load_specs(tmp_path), records, {}, {"ns-a", "ns-b"}, {"ns-a", "ns-b"})
    assert [(s.key, s.kind) for s in plan.actions] == [("n1/b/eth0", "delete")]
