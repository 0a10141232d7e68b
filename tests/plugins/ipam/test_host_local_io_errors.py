"""host-local when the disk fails under it: a reservation that cannot be made durable is not kept.

The failure is real: ext4 on a loop device whose backing image is then cut to its first 64 KiB
and the device resized to match. Every later write past that point (bitmaps, inode tables, data)
fails in the block layer, so fsync returns EIO, whichever blocks ext4 picks, while what is cached
stays readable: a disk that stopped taking writes under a mounted filesystem.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.errors import IO_FAILURE, CNIError
from reconciler.plugins.ipam import host_local as hl
from tests.conftest import run
from tests.plugins.ipam.ipamtest import call, files_of, hl_conf

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a loop device"),
    pytest.mark.skipif(not (shutil.which("losetup") and shutil.which("mkfs.ext4")),
                       reason="losetup or mkfs.ext4 missing (util-linux, e2fsprogs)"),
    pytest.mark.skipif(not os.path.exists("/dev/loop-control"), reason="this kernel has no loop devices"),
]


@pytest.fixture
def failing_disk(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """(mountpoint, fail): ext4 (no journal, errors=continue) on a loop device over a sparse 64 MiB
    image; fail() cuts the image to 64 KiB and shrinks the device to match. Unmounted and detached
    at teardown, even on failure."""
    image, mnt = tmp_path / "image", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    loop = run("losetup", "--find", "--show", str(image)).stdout.strip()
    mounted = False
    try:
        run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-N", "512", "-E", "lazy_itable_init=1,nodiscard", loop)
        run("mount", "-o", "errors=continue", loop, str(mnt))
        mounted = True

        def fail() -> None:
            os.truncate(image, 64 << 10)
            run("losetup", "--set-capacity", loop)

        yield mnt, fail
    finally:
        if mounted:
            run("umount", str(mnt), check=False)
        run("losetup", "-d", loop, check=False)


def _reservations(files: dict[str, bytes]) -> dict[str, bytes]:
    return {name: data for name, data in files.items() if not name.startswith("last_reserved_ip")}


def test_add_whose_reservation_cannot_be_synced_fails_and_keeps_nothing(failing_disk) -> None:
    mnt, fail = failing_disk
    conf = hl_conf(mnt, [{"subnet": "10.9.0.0/29"}], [{"subnet": "fd00:9::/125"}])
    first = call(hl, "ADD", conf, "c1")
    assert [ip.address for ip in first.ips] == ["10.9.0.2/29", "fd00:9::2/125"]
    os.sync()
    before = files_of(mnt / "rcnnet")

    fail()
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
