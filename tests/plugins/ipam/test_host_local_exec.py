"""Our host-local as an installed executable: the 1.1.0 verbs through the exec protocol."""

from __future__ import annotations

from pathlib import Path

from tests.plugins.ipam.ipamtest import files_of, hl_conf


def test_gc_and_status_exec(tmp_path: Path, ours_bin, run_bin) -> None:
    conf = hl_conf(tmp_path, [{"subnet": "10.9.7.0/29"}], version="1.1.0")
    assert run_bin(ours_bin, "STATUS", conf, cid="", ifname="").code == 0
    for i in range(5):
        run = run_bin(ours_bin, "ADD", conf, cid=f"c{i}")
        assert run.code == 0 and run.json["cniVersion"] == "1.1.0", run.stdout
    status = run_bin(ours_bin, "STATUS", conf, cid="", ifname="")
    assert status.code != 0 and status.json["code"] == 50, status.stdout
    again = run_bin(ours_bin, "ADD", conf, cid="c2")  # idempotent even when the pool is full
    assert again.code == 0 and again.json["ips"][0]["address"] == "10.9.7.4/29"
    gc_conf = conf | {"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}
    assert run_bin(ours_bin, "GC", gc_conf, cid="", ifname="").code == 0
    held = {n: v for n, v in files_of(tmp_path / "rcnnet").items() if not n.startswith("last")}
    assert held == {"10.9.7.3": b"c1\r\neth0"}
    assert run_bin(ours_bin, "STATUS", conf, cid="", ifname="").code == 0
    old = run_bin(ours_bin, "GC", gc_conf | {"cniVersion": "1.0.0"}, cid="", ifname="")
    assert old.code != 0 and old.json["code"] == 1  # GC needs a 1.1.0 config
    assert run_bin(ours_bin, "DEL", conf, cid="c1").code == 0
    assert run_bin(ours_bin, "DEL", conf, cid="c1").code == 0
    assert run_bin(ours_bin, "CHECK", conf, cid="c1").code != 0
