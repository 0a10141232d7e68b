"""`reconciler watch`: passes on file events (debounced), on a periodic resync and on SIGHUP.

A git checkout that replaces many files fires many events; they are collapsed
into one pass that starts once the directory has been quiet for `debounce`
seconds. The periodic resync re-observes the kernel, so it also repairs drift.
SIGTERM/SIGINT let the running pass finish, then the loop exits with 0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from reconciler.engine.apply import Engine, PassReport
from reconciler.engine.lock import state_lock

log = logging.getLogger(__name__)


class Watcher:
    def __init__(
        self,
        engine: Engine,
        interval: float = 30.0,
        debounce: float = 0.5,
        on_pass: Callable[[PassReport | None], None] | None = None,
    ) -> None:
        self.engine = engine
        self.interval = interval
        self.debounce = debounce
        self.on_pass = on_pass
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.last_event = 0.0
        self.dirty = True  # the first pass runs at once
        self.passes = 0

    # signal and event handlers only set flags; the loop does the work
    def _file_event(self, event: Any) -> None:
        path = str(getattr(event, "src_path", ""))
        if "/." in path or path.endswith("~"):
            return  # editor swap files and git's temp files
        self.last_event = time.monotonic()
        self.dirty = True
        self.wake.set()

    def _hup(self, *_: Any) -> None:
        log.info("SIGHUP: forcing a pass")
        self.dirty = True
        self.last_event = 0.0
        self.wake.set()

    def _term(self, signum: int, *_: Any) -> None:
        log.info("signal %d: finishing the running pass, then exiting", signum)
        self.stopping.set()
        self.wake.set()

    def _observer(self) -> Any:
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            log.warning("watchdog is not installed: only the periodic resync runs")
            return None
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                if getattr(event, "event_type", "") in ("opened", "closed_no_write"):
                    return
                watcher._file_event(event)

        observer = Observer()
        observer.schedule(Handler(), self.engine.specs_dir, recursive=True)
        observer.daemon = True
        observer.start()
        return observer

    def run_pass(self) -> PassReport | None:
        try:
            with state_lock(self.engine.state_dir, wait=True):
                report = self.engine.apply()
        except Exception as err:  # a broken pass is logged; the loop keeps serving
            log.error("pass failed: %s", err)
            if self.on_pass:
                self.on_pass(None)  # counted as an error pass
            return None
        self.passes += 1
        for err in report.plan.errors:
            log.error("spec error: %s", err)
        for out in report.outcomes:  # the CLI's on_pass logs them with structured fields at INFO
            log.debug("%s %s: %s %s", out.action, out.key, out.result, out.error)
        if self.on_pass:
            self.on_pass(report)
        return report

    def _serve(self, socket_path: str) -> int | None:
        """Fork the warm-path plugin daemon (its own process: its reaping never races our children)."""
        try:
            from reconciler.cni.server import Server
        except ImportError:
            return None
        pid = os.fork()
        if pid:
            return pid
        code = 0
        try:
            server = Server(socket_path or None)
            signal.signal(signal.SIGTERM, lambda *_: server.stop())
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            try:
                server.start()
            except RuntimeError as err:  # another daemon already serves the socket
                log.info("warm path not served by watch: %s", err)
                os._exit(0)
            server.serve_forever()
        except BaseException:  # noqa: BLE001 - the child never returns into the watch loop
            log.exception("warm-path daemon failed")
            code = 1
        os._exit(code)

    def run(self, serve_socket: str | None = None) -> int:
        server_pid = self._serve(serve_socket) if serve_socket is not None else None
        try:
            return self._loop()
        finally:
            if server_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server_pid, signal.SIGTERM)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(server_pid, 0)

    def _loop(self) -> int:
        signal.signal(signal.SIGTERM, self._term)
        signal.signal(signal.SIGINT, self._term)
        signal.signal(signal.SIGHUP, self._hup)
        observer = self._observer()
        next_resync = time.monotonic()
        try:
            while not self.stopping.is_set():
                now = time.monotonic()
                quiet = now - self.last_event >= self.debounce
                if (self.dirty and quiet) or now >= next_resync:
                    self.dirty = False
                    self.run_pass()
                    next_resync = time.monotonic() + self.interval
                    continue
                timeout = next_resync - now
                if self.dirty:
                    timeout = min(timeout, self.debounce - (now - self.last_event))
                self.wake.wait(max(timeout, 0.01))
                self.wake.clear()
        finally:
            if observer is not None:
                observer.stop()
                observer.join(timeout=2)
        log.info("watch: exiting after %d passes", self.passes)
        return 0
