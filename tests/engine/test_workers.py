"""engine.workers: fork_map and the shared queue of fork_queue, in real forked processes."""

from __future__ import annotations

import os
import time

from reconciler.engine.workers import WorkerFailed, fork_map, fork_queue


def test_fork_map_runs_each_part_once_and_keeps_the_order():
    parent = os.getpid()
    got = fork_map([[1, 2], [3], [4, 5, 6]], lambda part: (sum(part), os.getpid() == parent))
    assert got == [(3, True), (3, False), (15, False)]


def test_fork_queue_takes_every_item_once_across_processes_in_order():
    items = list(range(60))

    parent = os.getpid()

    def work(mine, index):
        out = []
        for item in mine:
            time.sleep(0.002)  # long enough for every process to take some
            out.append((item * item, os.getpid(), index))
        return out

    got = fork_queue(items, 3, work)
    assert [square for square, _, _ in got] == [i * i for i in items]
    assert len({pid for _, pid, _ in got}) == 3  # all three processes took items
    assert all((index == 0) == (pid == parent) for _, pid, index in got)  # index 0: this process


def test_fork_queue_a_slow_process_takes_fewer():
    parent = os.getpid()

    def work(mine, _index):
        out = []
        for _item in mine:
            time.sleep(0.02 if os.getpid() == parent else 0.002)
            out.append(os.getpid() == parent)
        return out

    got = fork_queue(list(range(40)), 2, work)
    assert 0 < sum(got) < 10, got  # the parent, ten times slower, took few of the 40


def test_fork_queue_items_of_a_worker_that_dies_are_failed_and_the_rest_done():
    parent = os.getpid()

    def work(mine, _index):
        out = []
        for item in mine:
            if os.getpid() != parent and item >= 5:
                os._exit(3)  # a worker dies holding the item it took
            time.sleep(0.002)
            out.append(item)
        return out

    got = fork_queue(list(range(30)), 2, work)
    failed = [i for i, r in enumerate(got) if isinstance(r, WorkerFailed)]
    assert failed, got
    assert all("died" in str(got[i]) for i in failed)
    assert all(got[i] == i for i in range(30) if i not in failed)


def test_fork_queue_more_items_than_a_default_pipe_holds():
    items = list(range(20000))  # 80 KB of item numbers: more than a 64 KiB pipe
    got = fork_queue(items, 2, lambda mine, _index: [i + 1 for i in mine])
    assert got == [i + 1 for i in items]


def test_fixed_slices_when_the_queue_cannot_be_made_keep_the_order_and_fail_a_dead_workers_items(monkeypatch):
    from reconciler.engine import workers

    monkeypatch.setattr(workers, "_filled_queue", lambda count: None)  # as if no pipe could hold them
    parent = os.getpid()
    assert fork_queue(list(range(10)), 3, lambda mine, _index: [i * 2 for i in mine]) == [i * 2 for i in range(10)]

    def dies_in_workers(mine, _index):
        if os.getpid() != parent:
            os._exit(1)
        return list(mine)

    got = fork_queue(list(range(6)), 2, dies_in_workers)
    assert got[0::2] == [0, 2, 4]
    assert all(isinstance(r, WorkerFailed) for r in got[1::2])
