"""The state lock: one reconciler applies at a time; `check` shares it."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from reconciler.errors import LockBusy, StateError


@contextlib.contextmanager
def state_lock(state_dir: str | Path, wait: bool = True, shared: bool = False) -> Iterator[None]:
    """flock on `<state>/reconciler/lock`: exclusive for apply/gc/watch passes, shared for check."""
    path = Path(state_dir) / "reconciler" / "lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        raise StateError(f"{path}: cannot open the state lock: {err.strerror}") from err
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        try:
            fcntl.flock(fd, mode | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError as err:
            raise LockBusy(f"another reconciler is applying in {state_dir} (lock {path} is held)") from err
        yield
    finally:
        os.close(fd)
