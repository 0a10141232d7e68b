"""Crash safety, the state lock, watch and gc — on the real kernel, with real processes and signals."""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(300)


def atts(rig, n: int) -> list[dict]:
    return [{"id": f"c{i}", "network": "net1", "netns": rig.ns(f"c{i}")} for i in range(n)]


def assert_clean_converged(rig, n: int) -> None:
    """Converged, one address per attachment, no duplicate or leaked address, no orphan veth or netns."""
    check = rig.run("check")
    assert check.returncode == 0, check.stdout + check.stderr
    addrs = [rig.addrs(rig.ns(f"c{i}")) for i in range(n)]
    assert all(len(a) == 1 for a in addrs), addrs
    flat = [a[0].split("/")[0] for a in addrs]
    assert len(set(flat)) == n
    assert sorted(flat) == sorted(rig.allocations())
    assert len(rig.host_links("veth")) == n
    assert rig.our_namespaces() == sorted(rig.ns(f"c{i}") for i in range(n))
    assert not list((rig.state / "reconciler" / "journal").glob("*.json"))


def recorded(rig) -> dict:
    """The reconciler's records (`reconciler/attachments.json`), by attachment key."""
    path = rig.state / "reconciler" / "attachments.json"
    return json.loads(path.read_text())["attachments"] if path.exists() else {}


@pytest.mark.slow
def test_kill_9_during_apply_then_apply_again(rig):
    n = 6
    rig.network()
    rig.attachments(atts(rig, n))
    rng = random.Random(os.getpid())
    for round_ in range(4):
        proc = rig.popen("apply")
        time.sleep(rng.uniform(0.05, 1.5))
        os.kill(proc.pid, signal.SIGKILL)  # nsenter execs python: this is the reconciler itself
        proc.wait()
        if round_ == 1:  # also crash in the middle of pruning and replacing
            rig.attachments(atts(rig, n)[:4])
        if round_ == 2:
            rig.network(extra={"mtu": 1450})
            rig.attachments(atts(rig, n))
    out = rig.run("apply")
    assert out.returncode == 0, out.stdout + out.stderr
    assert_clean_converged(rig, n)


def test_two_applies_at_once(rig):
    rig.network()
    rig.attachments(atts(rig, 4))
    first, second = rig.popen("apply"), rig.popen("apply")
    assert first.wait(240) == 0, first.stderr.read()
    assert second.wait(240) == 0, second.stderr.read()
    assert_clean_converged(rig, 4)


def test_lock_held_no_wait(rig):
    rig.network()
    rig.attachments(atts(rig, 1))
    lock = rig.state / "reconciler" / "lock"
    lock.parent.mkdir(parents=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        out = rig.run("apply", "--no-wait")
        assert out.returncode == 1 and "another reconciler" in out.stderr
        out = rig.run("check", "--no-wait")
        assert out.returncode == 1
    finally:
        os.close(fd)
    assert rig.run("apply", "--no-wait").returncode == 0


def test_watch_converges_repairs_and_exits_on_sigterm(rig):
    rig.network()
    rig.attachments(atts(rig, 2))
    port = random.randint(20000, 40000)
    sock = rig.state.parent / "plugin.sock"
    watch = rig.popen("watch", "--interval", "2", "--debounce", "0.3", "--socket", str(sock),
                      "--metrics-address", f"127.0.0.1:{port}")
    try:
        assert wait_until(lambda: rig.run("check", "--quiet").returncode == 0), "watch did not converge"
        # change the specs: one more attachment
        rig.attachments(atts(rig, 3))
        assert wait_until(lambda: len(rig.addrs(rig.ns("c2"))) == 1), "watch did not add c2"
        # tamper with the kernel: the periodic resync repairs it, keeping the address
        keep = rig.addrs(rig.ns("c0"))
        subprocess.run(["ip", "-n", rig.ns("c0"), "link", "del", "eth0"], check=True)
        assert wait_until(lambda: rig.addrs(rig.ns("c0")) == keep), "watch did not repair c0"
        # a bad file is logged and the rest keeps being served
        (rig.specs / "broken.toml").write_text("[[attachment]\n")
        subprocess.run(["ip", "-n", rig.ns("c1"), "link", "del", "eth0"], check=True)
        assert wait_until(lambda: len(rig.addrs(rig.ns("c1"))) == 1), "watch stopped serving after a bad file"
        # check from cron while watch runs
        assert rig.run("check").returncode == 0
        # the warm-path daemon and the metrics endpoint are served alongside
        assert wait_until(sock.exists, timeout=10)
        fetch = ("import urllib.request,sys;"
                 f"print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=5).read().decode())")
        metrics = subprocess.run(["ip", "netns", "exec", rig.host, sys.executable, "-c", fetch],
                                 capture_output=True, text=True)
        assert "reconciler_passes_total" in metrics.stdout, metrics.stderr
    finally:
        watch.send_signal(signal.SIGTERM)
        code = watch.wait(60)
    err = watch.stderr.read()
    assert code == 0, err
    assert "broken.toml" in err
    assert not sock.exists()


def test_repair_that_does_not_stick_backs_off(rig):
    rig.network()
    rig.attachments(atts(rig, 2))
    assert rig.run("apply").returncode == 0
    for _ in range(3):
        subprocess.run(["ip", "-n", rig.ns("c0"), "link", "del", "eth0"], check=True)
        out = rig.run("apply")
    assert out.returncode == 3 and "drift keeps coming back" in out.stdout, out.stdout
    subprocess.run(["ip", "-n", rig.ns("c0"), "link", "del", "eth0"], check=True)
    out = rig.run("apply")
    assert out.returncode == 3 and "backoff net1/c0/eth0: failing" in out.stdout, out.stdout
    assert rig.addrs(rig.ns("c0")) == []  # left alone while backing off
    status = json.loads(rig.run("status", "--output", "json").stdout)
    row = next(r for r in status["attachments"] if r["id"] == "c0")
    assert row["last_result"] == "failing"
    assert rig.run("plan").returncode == 2
    assert rig.addrs(rig.ns("c1"))  # the others are unaffected


def test_gc_frees_only_unreferenced_after_grace(rig):
    rig.network()
    rig.attachments(atts(rig, 2))
    assert rig.run("apply").returncode == 0
    live = set(rig.allocations())
    store = rig.state / "networks" / "net1"
    leak = f"{rig.subnet_base}.200"
    (store / leak).write_text("ghost-container\r\neth0")
    out = rig.run("gc", "--grace", "3600", "--output", "json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert any(leak in p for p in report["pending"]) and not report["freed"]
    assert (store / leak).exists()
    out = rig.run("gc", "--grace", "0", "--output", "json")
    report = json.loads(out.stdout)
    assert any(leak in f for f in report["freed"]), report
    assert not (store / leak).exists()
    assert set(rig.allocations()) == live
    assert rig.run("check").returncode == 0


def test_gc_honours_disable_gc_and_removes_orphan_namespaces(rig):
    rig.network()
    conf = json.loads((rig.specs / "net1.conflist").read_text())
    conf["disableGC"] = True
    (rig.specs / "net1.conflist").write_text(json.dumps(conf))
    rig.attachments(atts(rig, 1))
    assert rig.run("apply").returncode == 0
    leak = rig.state / "networks" / "net1" / f"{rig.subnet_base}.201"
    leak.write_text("ghost\r\neth0")
    # a namespace we own that no spec names any more (as a crash between steps could leave)
    orphan = rig.ns("orphan")
    subprocess.run(["ip", "netns", "add", orphan], check=True)
    owned = json.loads((rig.state / "reconciler" / "namespaces.json").read_text())
    (rig.state / "reconciler" / "namespaces.json").write_text(json.dumps(owned + [orphan]))
    out = rig.run("gc", "--grace", "0", "--output", "json")
    report = json.loads(out.stdout)
    assert leak.exists() and any("disableGC" in s for s in report["skipped"])
    assert orphan in report["namespaces"] and orphan not in rig.our_namespaces()
    assert rig.ns("c0") in rig.our_namespaces()


def test_foreign_namespace_and_cache_entries_untouched(rig, make_netns):
    foreign, foreign_path = make_netns("rcn-f-")
    rig.network()
    rig.attachments([{"id": "ext", "network": "net1", "netns": foreign_path}])
    assert rig.run("apply").returncode == 0
    assert len(rig.addrs(foreign)) == 1
    # a runtime's cache entry of a network that is not ours
    alien = rig.state / "results" / "othernet-abc-eth0"
    alien.write_text(json.dumps({"kind": "cniCacheV1", "containerId": "abc", "ifName": "eth0",
                                 "networkName": "othernet", "config": "", "result": {}}))
    rig.attachments([])
    assert rig.run("apply").returncode == 0
    assert rig.run("gc", "--grace", "0").returncode == 0
    assert os.path.exists(foreign_path)  # a path we were given is never deleted
    assert alien.exists()
    assert rig.addrs(foreign) == []


def test_interrupted_add_is_undone_then_redone(rig):
    """A crash after ADD but before the record: the journal entry makes the next apply undo and redo it."""
    rig.network()
    rig.attachments(atts(rig, 2))
    assert rig.run("apply").returncode == 0
    entry = json.loads((rig.state / "results" / "net1-c1-eth0").read_text())
    records_file = rig.state / "reconciler" / "attachments.json"
    records = json.loads(records_file.read_text())
    del records["attachments"]["net1/c1/eth0"]
    records_file.write_text(json.dumps(records))
    journal = rig.state / "reconciler" / "journal"
    journal.mkdir(exist_ok=True)
    (journal / "net1-c1-eth0.json").write_text(json.dumps({
        "key": "net1/c1/eth0", "action": "add", "network": "net1", "container_id": "c1", "ifname": "eth0",
        "netns": f"/run/netns/{rig.ns('c1')}", "config_b64": entry["config"], "pid": 1}))
    plan = rig.run("plan", "--output", "json")
    assert plan.returncode == 2
    assert json.loads(plan.stdout)["interrupted"][0].startswith("net1/c1/eth0: add")
    out = rig.run("apply")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "recovered: net1/c1/eth0: undid interrupted add" in out.stdout
    assert "add net1/c1/eth0: ok" in out.stdout
    assert_clean_converged(rig, 2)



def test_records_of_the_one_file_per_record_layout_are_kept(rig):
    """A state written by an older version (`reconciler/attachments/<key>.json`, one file per record):
    nothing is re-applied, and the next save folds the files into attachments.json."""
    rig.network()
    rig.attachments(atts(rig, 3))
    assert rig.run("apply").returncode == 0
    records_file = rig.state / "reconciler" / "attachments.json"
    legacy = rig.state / "reconciler" / "attachments"
    legacy.mkdir()
    for key, record in recorded(rig).items():
        (legacy / (key.replace("/", "-") + ".json")).write_text(json.dumps(record))
    records_file.unlink()
    plan = rig.run("plan")
    assert plan.returncode == 0, plan.stdout + plan.stderr  # in sync: the old records were read
    rig.attachments(atts(rig, 2))  # c2 goes: its record comes from the old layout
    out = rig.run("apply")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "delete net1/c2/eth0: ok" in out.stdout, out.stdout
    assert sorted(recorded(rig)) == ["net1/c0/eth0", "net1/c1/eth0"]
    assert not legacy.exists()
    assert_clean_converged(rig, 2)


def test_interrupted_batch_of_deletions_is_finished(rig):
    """A crash in the middle of a pass's deletions (journaled together in one batch entry, the emptied
    namespace already deleted): the next apply finishes the DEL, forgets the batch, and converges."""
    rig.network()
    rig.attachments(atts(rig, 3))
    assert rig.run("apply").returncode == 0
    gone = rig.addrs(rig.ns("c2"))[0].split("/")[0]
    rig.attachments(atts(rig, 2))
    subprocess.run(["ip", "netns", "delete", rig.ns("c2")], check=True)  # what the pass does first
    journal = rig.state / "reconciler" / "journal"
    journal.mkdir(exist_ok=True)
    (journal / "batch-1-1.json").write_text(json.dumps({"batch": [
        {"key": "net1/c2/eth0", "action": "delete", "network": "net1", "container_id": "c2", "ifname": "eth0",
         "netns": f"/run/netns/{rig.ns('c2')}", "pid": 1}]}))
    plan = rig.run("plan", "--output", "json")
    assert json.loads(plan.stdout)["interrupted"][0].startswith("net1/c2/eth0: delete")
    out = rig.run("apply")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "recovered: net1/c2/eth0" in out.stdout
    assert gone not in rig.allocations()
    assert_clean_converged(rig, 2)


def test_interrupted_batch_of_adds_is_undone_then_redone(rig):
    """A crash after a pass's ADDs (journaled together, records already written): the next apply
    undoes each one, namespaces included, and adds them again."""
    rig.network()
    rig.attachments(atts(rig, 2))
    assert rig.run("apply").returncode == 0
    config = json.loads((rig.state / "results" / "net1-c0-eth0").read_text())["config"]
    journal = rig.state / "reconciler" / "journal"
    journal.mkdir(exist_ok=True)
    (journal / "batch-1-2.json").write_text(json.dumps({"batch": [
        {"key": f"net1/c{i}/eth0", "action": "add", "network": "net1", "container_id": f"c{i}", "ifname": "eth0",
         "netns": f"/run/netns/{rig.ns(f'c{i}')}", "netns_name": rig.ns(f"c{i}"), "config_b64": config, "pid": 1}
        for i in range(2)]}))
    out = rig.run("apply")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "undid interrupted add" in out.stdout and "add net1/c1/eth0: ok" in out.stdout
    assert_clean_converged(rig, 2)

def test_gc_spares_a_live_foreign_cache_entry_and_frees_a_dead_one(rig, make_netns):
    rig.network()
    rig.attachments(atts(rig, 1))
    assert rig.run("apply").returncode == 0
    _alive_name, alive_path = make_netns("rcn-f-")
    results = rig.state / "results"
    template = json.loads((results / "net1-c0-eth0").read_text())
    for cid, netns in (("alive", alive_path), ("dead", "/run/netns/rcn-gone-nowhere")):
        entry = dict(template, containerId=cid, netns=netns, result={"cniVersion": "1.0.0"})
        (results / f"net1-{cid}-eth0").write_text(json.dumps(entry))
    out = rig.run("gc", "--grace", "0", "--output", "json")
    report = json.loads(out.stdout)
    assert (results / "net1-alive-eth0").exists()
    assert not (results / "net1-dead-eth0").exists() and "cache:net1/dead/eth0" in report["freed"]
    assert rig.run("check").returncode == 0


def test_adds_split_over_worker_processes(rig):
    """Enough ADDs for worker processes (RECONCILER_WORKERS=3): every attachment converged once, unique
    addresses, CHECK passes for each, records and journal as after a serial pass; the teardown is clean too."""
    rig.env["RECONCILER_WORKERS"] = "3"
    rig.network()
    rig.attachments(atts(rig, 9))
    out = rig.run("apply")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(": ok") >= 9, out.stdout
    assert_clean_converged(rig, 9)
    assert len(recorded(rig)) == 9
    assert rig.run("plan").returncode == 0
    rig.attachments([])
    assert rig.run("apply").returncode == 0
    assert rig.our_namespaces() == [] and rig.allocations() == [] and rig.host_links("veth") == []


def test_adds_over_workers_commit_their_masquerade_rules_once_each(rig):
    """ipMasq ADDs in worker processes queue their firewall writes and commit them once per worker
    before verifying: every attachment's rule is there exactly once, CHECK passes, teardown cleans."""
    from tests.engine.test_reconcile import _host_firewall_text

    rig.env["RECONCILER_WORKERS"] = "3"
    rig.network(extra={"ipMasq": True})
    rig.attachments(atts(rig, 9))
    out = rig.run("apply")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "not applied" not in out.stderr, out.stderr
    assert_clean_converged(rig, 9)
    rules = _host_firewall_text(rig)
    ips = [rig.addrs(rig.ns(f"c{i}"))[0].split("/")[0] for i in range(9)]
    assert all(rules.count(f"saddr {ip} ") + rules.count(f"-s {ip}/32 ") == 1 for ip in ips), rules
    assert rig.run("check").returncode == 0
    rig.attachments([])
    assert rig.run("apply").returncode == 0
    rules = _host_firewall_text(rig)
    assert not any(ip in rules for ip in ips), rules


def _nft_commits_during(rig, action) -> int:
    """How many nftables transactions the stand-in host's ruleset took while `action()` ran."""
    monitor = subprocess.Popen(["ip", "netns", "exec", rig.host, "nft", "monitor"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(0.5)  # the monitor subscribes before anything happens
        action()
        time.sleep(0.5)
    finally:
        monitor.terminate()
    out, _ = monitor.communicate(timeout=10)
    return out.count("# new generation")


def test_teardown_commits_every_masquerade_deletion_at_once(rig):
    """Pruning masquerading attachments deletes all their nftables rules in one transaction; records,
    cache entries and addresses go with them, and a second apply changes nothing."""
    if rig.env.get("RECONCILER_EXEC_MODE") == "1":
        pytest.skip("batched firewall writes are the in-process plugins' (exec mode drives the reference)")
    rig.env["RECONCILER_WORKERS"] = "1"
    rig.network(extra={"ipMasq": True, "ipMasqBackend": "nftables"})
    rig.attachments(atts(rig, 5))
    assert rig.run("apply").returncode == 0
    ips = [rig.addrs(rig.ns(f"c{i}"))[0].split("/")[0] for i in range(5)]
    rig.attachments([])
    out: list[subprocess.CompletedProcess] = []
    commits = _nft_commits_during(rig, lambda: out.append(rig.run("apply")))
    assert out[0].returncode == 0, out[0].stdout + out[0].stderr
    assert commits == 1, commits
    rules = subprocess.run(["ip", "netns", "exec", rig.host, "nft", "list", "ruleset"], capture_output=True,
                           text=True).stdout
    assert not any(ip in rules for ip in ips), rules
    assert rig.allocations() == [] and not list((rig.state / "results").iterdir())
    assert recorded(rig) == {}
    again = rig.run("apply")
    assert again.returncode == 0 and "delete" not in again.stdout, again.stdout


def test_teardown_whose_batched_commit_fails_deletes_one_by_one(rig, tmp_path):
    """Another program flushes the masquerade chain while the pass's DELs are queued, so their one
    transaction fails: every DEL is done again on its own, and all end deleted, nothing left behind."""
    if rig.env.get("RECONCILER_EXEC_MODE") == "1":
        pytest.skip("batched firewall writes are the in-process plugins' (exec mode drives the reference)")
    bindir = tmp_path / "cnibin"
    bindir.mkdir()
    meddler = bindir / "rcn-meddler"  # a third-party plugin in the chain, exec'd: passes results through,
    meddler.write_text(f"""#!{sys.executable}
import json, os, subprocess, sys
conf = json.load(sys.stdin)
command = os.environ["CNI_COMMAND"]
if command == "ADD":
    print(json.dumps(conf["prevResult"]))
elif command == "VERSION":
    print(json.dumps({{"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}}))
elif command == "DEL" and os.environ["CNI_CONTAINERID"] == "c3":  # and on one DEL flushes the chain
    subprocess.run(["nft", "flush", "chain", "inet", "cni_plugins_masquerade", "masq_checks"], check=True)
""")
    meddler.chmod(0o755)
    rig.env["CNI_PATH"] = f"{bindir}:/usr/lib/cni"
    rig.env["RECONCILER_WORKERS"] = "1"
    path = rig.network(extra={"ipMasq": True, "ipMasqBackend": "nftables"})
    conf = json.loads(path.read_text())
    conf["plugins"].append({"type": "rcn-meddler"})
    path.write_text(json.dumps(conf))
    rig.attachments(atts(rig, 5))
    first = rig.run("apply")
    assert first.returncode == 0, first.stdout + first.stderr
    ips = [rig.addrs(rig.ns(f"c{i}"))[0].split("/")[0] for i in range(5)]
    rig.attachments([])
    out = rig.run("apply")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "deleting one by one" in out.stderr, out.stderr
    rules = subprocess.run(["ip", "netns", "exec", rig.host, "nft", "list", "ruleset"], capture_output=True,
                           text=True).stdout
    assert not any(ip in rules for ip in ips), rules
    assert rig.allocations() == [] and rig.our_namespaces() == [] and not list((rig.state / "results").iterdir())
    assert recorded(rig) == {}
    assert not list((rig.state / "reconciler" / "journal").glob("*.json"))


def _syncs(rig, *cmd: str, env: dict | None = None) -> dict[str, int]:
    """Run `cmd` under strace; how many fsync and syncfs calls it (and its children) made."""
    log = rig.state.parent / f"strace-{uuid.uuid4().hex[:6]}.log"
    proc = subprocess.run(["strace", "-f", "-qq", "-e", "trace=fsync,fdatasync,syncfs", "-o", str(log), *cmd],
                          capture_output=True, text=True, env=env or rig.env, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = log.read_text()
    return {"fsync": text.count("fsync("), "syncfs": text.count("syncfs(")}


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed (make setup installs it)")
def test_a_pass_syncs_its_filesystem_once_instead_of_each_file(rig):
    """Every step of a pass is journaled (fsync'd) first and the pass ends with one syncfs of the state
    directory, so the result cache, records and host-local reservations it writes are not fsync'd one
    by one: the pass's fsyncs do not grow with its attachments. Outside a pass (`reconciler cni add`,
    an exec'd plugin) host-local and the cache fsync every write."""
    rig.env["RECONCILER_WORKERS"] = "1"
    rig.network()
    counts = []
    for n in (2, 8):  # adds 2, then 6 more
        rig.attachments(atts(rig, n))
        counts.append(_syncs(rig, *rig.cmd("apply", "--specs", str(rig.specs), "--state", str(rig.state))))
    assert_clean_converged(rig, 8)
    assert counts[0] == counts[1], counts
    assert counts[0]["syncfs"] == 1, counts
    ns = rig.ns("solo")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    env = dict(rig.env, NETCONFPATH=str(rig.specs), RECONCILER_IPAM_DATADIR=str(rig.state / "solo-ipam"))
    solo = _syncs(rig, *rig.cmd("cni", "add", "net1", f"/run/netns/{ns}", "--cache-dir", str(rig.state / "solo")),
                  env=env)
    assert solo["syncfs"] == 0 and solo["fsync"] >= 3, solo  # reservation, its directory, the cache entry
    subprocess.run(rig.cmd("cni", "del", "net1", f"/run/netns/{ns}", "--cache-dir", str(rig.state / "solo")),
                   env=env, check=True, capture_output=True)
    subprocess.run(["ip", "netns", "del", ns], check=True)


def test_observe_split_over_worker_processes_names_each_drift(rig):
    """CHECKs judged in worker processes (3 workers, 2 attachments each at least): the same verdicts
    as in one process, each drift named on its own attachment, then repaired."""
    rig.env.update(RECONCILER_WORKERS="3", RECONCILER_OBSERVE_PER_WORKER="2")
    rig.network()
    rig.attachments(atts(rig, 6))
    assert rig.run("apply").returncode == 0
    assert rig.run("check").returncode == 0
    before = {i: rig.addrs(rig.ns(f"c{i}")) for i in range(6)}
    subprocess.run(["ip", "-n", rig.ns("c1"), "link", "del", "eth0"], check=True)
    subprocess.run(["ip", "-n", rig.ns("c4"), "addr", "del", before[4][0], "dev", "eth0"], check=True)
    check = rig.run("check")
    assert check.returncode == 2, check.stdout + check.stderr
    assert "net1/c1/eth0" in check.stdout and "net1/c4/eth0" in check.stdout
    assert f"address {before[4][0]} missing" in check.stdout
    assert not any(f"net1/c{i}/eth0" in check.stdout for i in (0, 2, 3, 5)), check.stdout
    out = rig.run("apply")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("repair") >= 2, out.stdout
    assert {i: rig.addrs(rig.ns(f"c{i}")) for i in range(6)} == before
    assert_clean_converged(rig, 6)


FAILING_CHECK_PLUGIN = """#!{python}
# a chained plugin that passes ADD's prevResult through, accepts DEL and refuses every CHECK
import json, os, sys
conf = json.load(sys.stdin)
verb = os.environ["CNI_COMMAND"]
if verb == "ADD":
    print(json.dumps(dict(conf["prevResult"], cniVersion=conf["cniVersion"])))
elif verb == "CHECK":
    print(json.dumps({{"cniVersion": conf["cniVersion"], "code": 999, "msg": "rcnfailcheck refuses CHECK"}}))
    sys.exit(1)
"""


def test_adds_that_do_not_verify_are_rolled_back(rig, tmp_path):
    """Every ADD is verified by CHECK, in the worker that did it and from what it holds in memory:
    a chain whose CHECK fails right after a successful ADD leaves nothing behind (namespace,
    address, veth, cache entry, record), and the failure names the CHECK."""
    plugin_dir = tmp_path / "bin"
    plugin_dir.mkdir()
    plugin = plugin_dir / "rcnfailcheck"
    plugin.write_text(FAILING_CHECK_PLUGIN.format(python=sys.executable))
    plugin.chmod(0o755)
    rig.env.update(RECONCILER_WORKERS="2", CNI_PATH=f"{plugin_dir}:/usr/lib/cni")
    path = rig.network()
    conf = json.loads(path.read_text())
    conf["plugins"].append({"type": "rcnfailcheck"})
    path.write_text(json.dumps(conf))
    rig.attachments(atts(rig, 6))  # 5 parallel-eligible ADDs: the worker processes verify them
    out = rig.run("apply", "--output", "json")
    assert out.returncode == 3, out.stdout + out.stderr
    report = json.loads(out.stdout)
    failed = {o["key"]: o["error"] for o in report["outcomes"] if o["result"] == "failed"}
    assert sorted(failed) == [f"net1/c{i}/eth0" for i in range(6)], report
    assert all("rcnfailcheck refuses CHECK" in error for error in failed.values()), failed
    assert rig.our_namespaces() == []
    assert rig.allocations() == []
    assert rig.host_links("veth") == []
    assert not list((rig.state / "results").glob("net1-*"))
    assert not list((rig.state / "reconciler" / "journal").glob("*.json"))
    status = rig.run("status", "--output", "json")
    listed = json.loads(status.stdout)["attachments"]
    assert len(listed) == 6 and not any(a["applied"] for a in listed), listed
    assert all("verification failed after ADD (rolled back)" in a["error"] for a in listed), listed
