"""host-local when the disk fails under it: a reservation that cannot be made durable is not kept.

The failure is real: ext4 on a loop device whose backing file lives on a small tmpfs. Once the
tmpfs is full, the kernel cannot write the loop device's new blocks back, so fsync returns EIO
while the filesystem above still shows free space (thin provisioning run dry).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.errors import IO_FAILURE, CNIError
from reconciler.plugins.ipam import host_local as hl
from tests.plugins.ipam.ipamtest import call, files_of, hl_conf

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a loop device"),
    pytest.mark.skipif(not (shutil.which("losetup") and shutil.which("mkfs.ext4")),
                       reason="losetup or mkfs.ext4 missing (util-linux, e2fsprogs)"),
    pytest.mark.skipif(not os.path.exists("/dev/loop-control"), reason="this kernel has no loop devices"),
]


def _run(*cmd: str | Path) -> str:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def thin_disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(mountpoint, backing tmpfs): ext4 (no journal, errors=continue) on a loop device over a sparse
    64 MiB image on an 8 MiB tmpfs. Filling the tmpfs makes every later writeback fail. Unmounted
    and detached at teardown, even on failure."""
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    _run("mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "rcn-thin", backing)
    loop = ""
    try:
        image = backing / "image"
        with open(image, "wb") as f:
            f.truncate(64 << 20)
        loop = _run("losetup", "--find", "--show", image)
        _run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-N", "512", "-E", "lazy_itable_init=1,nodiscard", loop)
        _run("mount", "-o", "errors=continue", loop, mnt)
        yield mnt, backing
    finally:
        subprocess.run(["umount", mnt], capture_output=True)
        if loop:
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        subprocess.run(["umount", backing], capture_output=True)


def _fill(backing: Path) -> None:
    """Use up the tmpfs under the image."""
    with open(backing / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass


def _reservations(files: dict[str, bytes]) -> dict[str, bytes]:
    return {name: data for name, data in files.items() if not name.startswith("last_reserved_ip")}


def test_add_whose_reservation_cannot_be_synced_fails_and_keeps_nothing(thin_disk) -> None:
    mnt, backing = thin_disk
    conf = hl_conf(mnt, [{"subnet": "10.9.0.0/29"}], [{"subnet": "fd00:9::/125"}])
    first = call(hl, "ADD", conf, "c1")
    assert [ip.address for ip in first.ips] == ["10.9.0.2/29", "fd00:9::2/125"]
    os.sync()
    before = files_of(mnt / "rcnnet")

    _fill(backing)
    with pytest.raises(CNIError) as err:
        call(hl, "ADD", conf, "c2")
    assert err.value.code == IO_FAILURE
    assert "cannot sync allocation store" in err.value.msg
    # Both of c2's names were linked before the sync failed, and both were taken back. (The
    # round-robin hints moved on, as the reference's do after a failed ADD: they are only hints.)
    assert _reservations(files_of(mnt / "rcnnet")) == _reservations(before) == {
        "10.9.0.2": b"c1\r\neth0", "fd00:9::2": b"c1\r\neth0"}
    # What was durable stays usable: c1's reservation is still its own.
    call(hl, "CHECK", {**conf, "prevResult": first.model_dump(mode="json", by_alias=True, exclude_none=True)}, "c1")
