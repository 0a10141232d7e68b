"""The reconciler's records: one file, staged changes, the older one-file-per-record layout."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from reconciler.engine.inventory import Inventory, Record
from reconciler.errors import StateError


def record(cid: str, ips: list[str] | None = None) -> Record:
    return Record(key=f"net1/{cid}/eth0", network="net1", id=cid, ifname="eth0", netns=f"ns-{cid}",
                  netns_path=f"/run/netns/ns-{cid}", owns_netns=True, file="/specs/a.toml",
                  network_file="/specs/net1.conflist", fingerprint="f", ips=ips or ["10.9.0.2/24"])


def on_disk(inv: Inventory) -> dict:
    return json.loads(inv.records_file.read_text())["attachments"]


def test_staged_changes_show_in_records_and_reach_the_file_on_save(tmp_path):
    inv = Inventory(tmp_path)
    inv.ensure()
    assert inv.records() == {}
    inv.put(record("c0"))
    inv.put(record("c1"))
    assert sorted(inv.records()) == ["net1/c0/eth0", "net1/c1/eth0"]
    assert not inv.records_file.exists()  # staged only
    inv.save()
    assert on_disk(inv) == {"net1/c0/eth0": asdict(record("c0")), "net1/c1/eth0": asdict(record("c1"))}
    inv.drop("net1/c0/eth0")
    inv.put(record("c1", ["10.9.0.7/24"]))
    assert Inventory(tmp_path).records() == {"net1/c0/eth0": record("c0"), "net1/c1/eth0": record("c1")}
    inv.save()
    assert Inventory(tmp_path).records() == {"net1/c1/eth0": record("c1", ["10.9.0.7/24"])}


def test_discard_forgets_staged_changes(tmp_path):
    inv = Inventory(tmp_path)
    inv.put(record("c0"))
    inv.save()
    inv.drop("net1/c0/eth0")
    inv.put(record("c1"))
    inv.discard()
    inv.save()  # nothing staged: no write
    assert inv.records() == {"net1/c0/eth0": record("c0")}


def test_records_of_the_older_layout_are_read_and_folded_in_on_save(tmp_path):
    inv = Inventory(tmp_path)
    inv.legacy_dir.mkdir(parents=True)
    for cid in ("c0", "c1"):
        (inv.legacy_dir / f"net1-{cid}-eth0.json").write_text(json.dumps(asdict(record(cid))))
    (inv.legacy_dir / ".tmp-half-written").write_text("{")
    assert inv.records() == {"net1/c0/eth0": record("c0"), "net1/c1/eth0": record("c1")}
    inv.drop("net1/c1/eth0")
    inv.save()
    assert sorted(on_disk(inv)) == ["net1/c0/eth0"]
    assert not list(inv.legacy_dir.glob("*.json"))
    assert Inventory(tmp_path).records() == {"net1/c0/eth0": record("c0")}


def test_a_record_in_both_layouts_is_taken_from_the_new_file(tmp_path):
    inv = Inventory(tmp_path)
    inv.put(record("c0", ["10.9.0.9/24"]))
    inv.save()
    inv.legacy_dir.mkdir()
    (inv.legacy_dir / "net1-c0-eth0.json").write_text(json.dumps(asdict(record("c0"))))
    assert inv.records() == {"net1/c0/eth0": record("c0", ["10.9.0.9/24"])}


@pytest.mark.parametrize("content", ["{", "[]", '{"attachments": []}'])
def test_an_unreadable_records_file_is_a_state_error_naming_it(tmp_path, content):
    inv = Inventory(tmp_path)
    inv.ensure()
    inv.records_file.write_text(content)
    with pytest.raises(StateError, match="attachments.json"):
        inv.records()
