"""The intent journal on real files: recovery forgets many intents in one pass over the batch files."""

from __future__ import annotations

import json

from reconciler.engine.journal import Intent, Journal


def test_forget_takes_many_keys_out_of_own_entries_and_batches_at_once(tmp_path):
    journal = Journal(tmp_path)
    journal.begin(Intent("n/a/eth0", "add"))
    journal.begin(Intent("n/b/eth0", "add"))
    first = journal.begin_batch([Intent(f"n/c{i}/eth0", "add") for i in range(3)])
    second = journal.begin_batch([Intent("n/d/eth0", "delete"), Intent("n/a/eth0", "delete")])
    assert first is not None and second is not None

    journal.forget(k for k in ("n/a/eth0", "n/c0/eth0", "n/c2/eth0", "n/zz/eth0"))

    assert sorted(i.key for i in journal.pending()) == ["n/b/eth0", "n/c1/eth0", "n/d/eth0"]
    assert [i["key"] for i in json.loads(first.read_text())["batch"]] == ["n/c1/eth0"]
    assert [i["key"] for i in json.loads(second.read_text())["batch"]] == ["n/d/eth0"]

    journal.forget(["n/b/eth0", "n/c1/eth0", "n/d/eth0"])
    assert journal.pending() == []
    assert not first.exists() and not second.exists()
    journal.forget([])  # nothing to do, nothing fails
