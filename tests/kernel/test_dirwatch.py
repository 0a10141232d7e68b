"""kernel.dirwatch against real inotify: every change is reported, and nothing is guessed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.kernel.dirwatch import Watch


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, Watch]]:
    directory = tmp_path / "store"
    directory.mkdir()
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        watch = Watch.arm(fd)
        assert watch is not None
        yield directory, watch
    finally:
        os.close(fd)


def test_reports_each_kind_of_change_once(watched: tuple[Path, Watch]) -> None:
    directory, watch = watched
    assert watch.changes() == set()
    (directory / "10.0.0.2").write_bytes(b"c1\r\neth0")
    (directory / "10.0.0.3").write_bytes(b"c2\r\neth0")
    (directory / "10.0.0.3").unlink()
    assert watch.changes() == {"10.0.0.2", "10.0.0.3"}
    assert watch.changes() == set()  # consumed
    (directory / "10.0.0.2").rename(directory / "10.0.0.4")
    assert watch.changes() == {"10.0.0.2", "10.0.0.4"}
    with open(directory / "10.0.0.4", "r+b") as f:  # rewritten in place: reported on close
        f.write(b"c9")
    assert watch.changes() == {"10.0.0.4"}


def test_two_watches_on_one_directory_each_see_everything(watched: tuple[Path, Watch]) -> None:
    directory, first = watched
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        second = Watch.arm(fd)
    finally:
        os.close(fd)
    assert second is not None
    (directory / "a").write_bytes(b"")
    assert first.changes() == {"a"}
    assert second.changes() == {"a"}  # not consumed by the first


def test_a_removed_or_moved_directory_is_unknown(tmp_path: Path, watched: tuple[Path, Watch]) -> None:
    directory, watch = watched
    directory.rename(tmp_path / "elsewhere")
    assert watch.changes() is None
    assert watch.changes() is None  # stays unknown: the caller must list and arm anew


def test_a_forked_child_never_reads_the_parents_events(watched: tuple[Path, Watch]) -> None:
    directory, watch = watched
    pid = os.fork()
    if pid == 0:  # the child: the inherited watch refuses to answer, and reads nothing
        code = 0 if watch.changes() is None else 1
        (directory / "from-child").write_bytes(b"")
        code |= 0 if watch.changes() is None else 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert watch.changes() == {"from-child"}  # still queued for the parent


def test_an_overflowed_queue_is_unknown(watched: tuple[Path, Watch]) -> None:
    """More events than the kernel queues (fs.inotify.max_queued_events) while nobody reads: the watch
    cannot say what changed, so it says None and the caller lists the directory."""
    directory, watch = watched
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 100_000:
        pytest.skip(f"fs.inotify.max_queued_events is {limit}: too many files to overflow it here")
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(limit // 2 + 10):  # each: IN_CREATE and IN_CLOSE_WRITE
            os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
    finally:
        os.close(fd)
    assert watch.changes() is None
    assert watch.changes() is None  # stays unknown
