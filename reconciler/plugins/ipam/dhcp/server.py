"""The daemon's unix socket: claim it, serve requests, stop cleanly on SIGTERM/SIGINT.

A stale socket file (its daemon was killed) is replaced; a live one is left
alone and start-up fails. systemd socket activation (one LISTEN_FDS socket)
is honoured, as with the reference's `cni-dhcp.socket` unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

from reconciler import activation
from reconciler.errors import INTERNAL, INVALID_NETWORK_CONFIG, CNIError
from reconciler.plugins.ipam.dhcp import wire
from reconciler.plugins.ipam.dhcp.daemon import Daemon

log = logging.getLogger(__name__)
REQUEST_READ_TIMEOUT = 10.0


def claim_socket(socket_path: str) -> None:
    """Make the socket's directory (0700) and remove a stale socket; refuse a live one."""
    if activation.claim(socket_path, f"another dhcp daemon is already listening on {socket_path}"):
        log.info("dhcp: replaced stale socket %s", socket_path)


async def handle(daemon: Daemon, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One connection: read one request, answer it, close. Nothing a client sends kills the daemon."""
    reply: dict[str, Any]
    try:
        try:
            req = await asyncio.wait_for(wire.read_message(reader), REQUEST_READ_TIMEOUT)
        except (TimeoutError, wire.ProtocolError, asyncio.IncompleteReadError, ConnectionError) as exc:
            raise CNIError(
                INVALID_NETWORK_CONFIG, f"bad dhcp daemon request: {exc or type(exc).__name__}"
            ) from exc
        reply = await daemon.dispatch(req)
    except CNIError as err:
        reply = {"ok": False, **err.to_dict()}
    except Exception as exc:
        log.exception("dhcp: request failed")
        reply = {"ok": False, "code": INTERNAL, "msg": f"dhcp daemon: {type(exc).__name__}: {exc}"}
    with contextlib.suppress(Exception):
        writer.write(wire.encode(reply))
        await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


async def serve(daemon: Daemon, pidfile: str | None = None) -> None:
    """Run until SIGTERM/SIGINT; leases stay on disk for the next start."""
    activated = activation.activated_socket()
    if activated is None:
        claim_socket(daemon.socket_path)
    if pidfile:
        Path(pidfile).write_text(f"{os.getpid()}\n")
    await daemon.startup()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handle(daemon, reader, writer)

    if activated is not None:
        server = await asyncio.start_unix_server(on_connect, sock=activated)
    else:
        old_umask = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(on_connect, path=daemon.socket_path)
        finally:
            os.umask(old_umask)
        os.chmod(daemon.socket_path, 0o600)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("dhcp: daemon listening on %s (state in %s)", daemon.socket_path, daemon.store.root)
    watcher = asyncio.create_task(daemon.run_watcher(stop))
    try:
        await stop.wait()
    finally:
        server.close()
        if activated is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(daemon.socket_path)
        if pidfile:
            Path(pidfile).unlink(missing_ok=True)
        await watcher
        await daemon.shutdown()
        log.info("dhcp: daemon stopped")
