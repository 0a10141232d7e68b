"""The DHCP lease daemon's state and verbs: holds, renews and releases leases for containers.

One asyncio loop (the socket side is `server.py`) runs one
`DHCPSession` (kernel layer, pyroute2's client) per container interface.
Every lease change is written to the `LeaseStore`, so a restarted daemon
resumes each lease (INIT-REBOOT) instead of losing it, and releases queued by
a DEL that found no daemon are performed at start-up and on every tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.errors import INTERNAL, INVALID_NETWORK_CONFIG, TRY_AGAIN_LATER, CNIError
from reconciler.kernel.dhcp import (
    BOUND_STATES,
    DHCPKernelError,
    DHCPSession,
    SessionSpec,
    lease_remaining,
    netns_identity,
)
from reconciler.plugins.ipam.dhcp.leaseinfo import summarise
from reconciler.plugins.ipam.dhcp.store import LeaseStore

log = logging.getLogger(__name__)

TICK = 2.0


@dataclass
class Entry:
    """One container interface's lease as the daemon tracks it."""

    record: dict[str, Any]
    session: DHCPSession | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def key(self) -> str:
        return str(self.record["key"])


def _fresh(lease: dict[str, Any] | None) -> bool:
    if not lease:
        return False
    remaining = lease_remaining(lease)
    return remaining is None or remaining > 0


def _addresses(value: Any) -> list[str]:
    """prevResult addresses, canonical; the unparsable ones are ignored."""
    out = []
    for item in value if isinstance(value, list) else []:
        with contextlib.suppress(ValueError, TypeError):
            out.append(str(ipaddress.ip_interface(item)))
    return out


def _bad(msg: str) -> CNIError:
    return CNIError(INVALID_NETWORK_CONFIG, f"bad dhcp daemon request: {msg}")


def _field(req: dict[str, Any], name: str, kind: type = str) -> Any:
    value = req.get(name)
    if not isinstance(value, kind) or (kind is str and not value):
        raise _bad(f"field {name!r} must be a non-empty {kind.__name__}")
    return value


class Daemon:
    """The daemon's state and request handlers."""

    def __init__(
        self,
        socket_path: str,
        state_dir: str | Path | None = None,
        timeout: float = 30.0,
        resend_max: float = 16.0,
        broadcast: bool = True,
        hostprefix: str = "",
    ) -> None:
        from reconciler.plugins.ipam.dhcp.store import state_dir_for

        self.socket_path = socket_path
        self.store = LeaseStore(Path(state_dir) if state_dir else state_dir_for(socket_path))
        self.timeout = timeout
        self.resend_max = resend_max
        self.broadcast = broadcast
        self.hostprefix = hostprefix.rstrip("/")
        self.entries: dict[str, Entry] = {}
        self._stop = asyncio.Event()

    # --- sessions ------------------------------------------------------------------------------
    def _spec(self, record: dict[str, Any]) -> SessionSpec:
        opts = record["options"]
        broadcast = opts.get("broadcast")
        return SessionSpec(
            netns=record["netns"],
            ifname=record["ifname"],
            client_id=bytes.fromhex(opts["client_id"]),
            requested=tuple(int(c) for c in opts["requested"]),
            provide={int(code): bytes.fromhex(value) for code, value in opts.get("provide", {}).items()},
            broadcast=self.broadcast if broadcast is None else bool(broadcast),
            resend_max=self.resend_max,
        )

    def _session(self, entry: Entry, stored: dict[str, Any] | None) -> DHCPSession:
        def on_change(event: str, lease: dict[str, Any] | None) -> None:
            self._lease_changed(entry, event, lease)

        return DHCPSession(self._spec(entry.record), stored=stored, on_change=on_change)

    def _lease_changed(self, entry: Entry, event: str, lease: dict[str, Any] | None) -> None:
        record = entry.record
        if event == "lease" and lease is not None:
            old = (record.get("lease") or {}).get("ack", {}).get("yiaddr")
            new = lease["ack"]["yiaddr"]
            if old and old != new:
                log.warning("dhcp: %s: address changed from %s to %s", entry.key, old, new)
                record["status"] = f"lost: address changed from {old} to {new}"
            record["lease"] = lease
        elif event in ("bound", "renewed", "rebound"):
            if not str(record.get("status", "")).startswith("lost: address changed"):
                record["status"] = "bound"
            log.info(
                "dhcp: %s: lease %s (%s)",
                entry.key,
                event,
                (record.get("lease") or {}).get("ack", {}).get("yiaddr"),
            )
        elif event in ("unbound", "expired"):
            record["status"] = f"lost: lease {event}"
            log.warning("dhcp: %s: lease lost (%s); trying to acquire it again", entry.key, event)
        else:
            return
        record["updated"] = time.time()
        try:
            self.store.save(record)
        except OSError as exc:
            log.error("dhcp: cannot persist lease of %s: %s", entry.key, exc)

    async def _stop_session(self, entry: Entry, release: bool) -> None:
        session, entry.session = entry.session, None
        if session is not None:
            await session.stop(release=release)

    async def _release_stored(self, entry: Entry) -> None:
        """Send a DHCPRELEASE for a lease we hold on disk but no longer renew."""
        lease = entry.record.get("lease")
        if not lease or netns_identity(entry.record["netns"]) != tuple(entry.record.get("netns_id") or ()):
            log.info("dhcp: %s: netns gone, nothing to release from", entry.key)
            return
        session = self._session(entry, stored=lease)
        try:
            await session.open()
        except DHCPKernelError as exc:
            log.warning("dhcp: %s: cannot send DHCPRELEASE: %s", entry.key, exc)
            return
        await session.stop(release=True)

    # --- verbs ---------------------------------------------------------------------------------
    async def allocate(self, req: dict[str, Any]) -> dict[str, Any]:
        key = _field(req, "key")
        ifname = _field(req, "ifname")
        netns = self.hostprefix + _field(req, "netns")
        options = _field(req, "options", dict)
        try:
            bytes.fromhex(_field(options, "client_id"))
            [int(c) for c in _field(options, "requested", list)]
            {int(k): bytes.fromhex(v) for k, v in (options.get("provide") or {}).items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise _bad(f"options: {exc}") from exc
        timeout = options.get("timeout") or self.timeout
        if not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
            raise _bad("options.timeout must be a number of seconds")
        nsid = netns_identity(netns)
        if nsid is None:
            raise CNIError(INTERNAL, f"netns {netns} does not exist")
        await self._drain_releases(only=key)
        entry = self.entries.setdefault(key, Entry(record={"key": key}))
        async with entry.lock:
            same = (
                entry.session is not None
                and entry.session.running
                and tuple(entry.record.get("netns_id") or ()) == nsid
                and entry.record.get("ifname") == ifname
            )
            if not same:
                await self._stop_session(entry, release=False)
                stored = entry.record.get("lease") if entry.record.get("ifname") == ifname else None
                if not _fresh(stored):
                    stored = None
                entry.record.update(
                    netns=netns,
                    netns_id=list(nsid),
                    ifname=ifname,
                    options=options,
                    container_id=req.get("container_id"),
                    network=req.get("network"),
                    status="acquiring",
                    lease=stored,
                )
                entry.session = self._session(entry, stored)
                try:
                    await entry.session.start()
                except DHCPKernelError as exc:
                    await self._discard(entry)
                    raise CNIError(
                        INTERNAL, f"dhcp: cannot start a DHCP client on {ifname} in {netns}", str(exc)
                    ) from exc
            session = entry.session
            assert session is not None
            try:
                lease = await session.wait_bound(float(timeout))
            except TimeoutError as exc:
                await self._discard(entry)
                raise CNIError(
                    TRY_AGAIN_LATER,
                    f"no DHCP lease for {ifname} in {netns} within {timeout:g}s",
                    "no DHCP server answered (is one reachable on that network?)",
                ) from exc
            entry.record["status"] = "bound"
            self.store.save(entry.record)
            return {"ok": True, "lease": summarise(lease)}

    async def _discard(self, entry: Entry) -> None:
        await self._stop_session(entry, release=False)
        self.entries.pop(entry.key, None)
        self.store.forget(entry.key)

    async def release(self, req: dict[str, Any]) -> dict[str, Any]:
        key = _field(req, "key")
        entry = self.entries.get(key)
        if entry is None:
            return {"ok": True, "released": False}
        async with entry.lock:
            if entry.session is not None and entry.session.running:
                await self._stop_session(entry, release=True)
            else:
                await self._release_stored(entry)
            self.entries.pop(key, None)
            self.store.forget(key)
        log.info("dhcp: %s: released", key)
        return {"ok": True, "released": True}

    async def check(self, req: dict[str, Any]) -> dict[str, Any]:
        key = _field(req, "key")
        entry = self.entries.get(key)
        if entry is None:
            raise CNIError(INTERNAL, f"dhcp: no lease held for {key}")
        status = str(entry.record.get("status", ""))
        session = entry.session
        if session is None or not session.running:
            raise CNIError(INTERNAL, f"dhcp: lease of {key} is not being renewed", status)
        if status.startswith("lost"):
            raise CNIError(
                INTERNAL, f"dhcp: lease of {key} is lost", f"{status}; client state {session.state}"
            )
        if session.state not in BOUND_STATES:
            raise CNIError(
                INTERNAL, f"dhcp: lease of {key} is not bound yet", f"client state {session.state}"
            )
        lease = session.lease
        assert lease is not None
        remaining = lease_remaining(lease)
        if remaining is not None and remaining <= 0:
            raise CNIError(INTERNAL, f"dhcp: lease of {key} has expired")
        summary = summarise(lease)
        expected = _addresses(req.get("addresses"))
        if expected and summary["address"] not in expected:
            raise CNIError(
                INTERNAL, f"dhcp: lease of {key} is {summary['address']}, not {', '.join(expected)}"
            )
        return {"ok": True, "lease": summary, "state": session.state, "expires_in": remaining}

    async def gc(self, req: dict[str, Any]) -> dict[str, Any]:
        """Release this network's leases whose attachment is not in `valid`."""
        network = _field(req, "network")
        valid = req.get("valid")
        if not isinstance(valid, list) or not all(isinstance(k, str) for k in valid):
            raise _bad("field 'valid' must be a list of client identifiers")
        stale = [
            k for k, e in self.entries.items() if e.record.get("network") == network and k not in set(valid)
        ]
        for key in stale:
            log.info("dhcp: gc: %s is not a valid attachment of %s", key, network)
            await self.release({"key": key})
        return {"ok": True, "released": stale}

    async def status(self, req: dict[str, Any]) -> dict[str, Any]:
        held = sum(
            1 for e in self.entries.values() if e.session is not None and e.session.state in BOUND_STATES
        )
        return {"ok": True, "leases": len(self.entries), "bound": held, "pid": os.getpid()}

    # --- background work -------------------------------------------------------------------------
    async def _drain_releases(self, only: str | None = None) -> None:
        for path, req in self.store.pending_releases():
            if only is not None and req.get("key") != only:
                continue
            with contextlib.suppress(CNIError):
                await self.release(req)
            path.unlink(missing_ok=True)

    def _load(self) -> None:
        """Track every stored lease whose netns is still there; forget the others."""
        for record in self.store.load_all():
            key = str(record["key"])
            nsid = netns_identity(str(record.get("netns", "")))
            if nsid is None or list(nsid) != list(record.get("netns_id") or []):
                log.info("dhcp: %s: netns %s is gone, forgetting its lease", key, record.get("netns"))
                self.store.forget(key)
                continue
            self.entries[key] = Entry(record=record)

    async def _resume(self) -> None:
        """Restart the client of every loaded lease (INIT-REBOOT: ask for the same address)."""
        for entry in list(self.entries.values()):
            if entry.session is not None:
                continue
            stored = entry.record.get("lease")
            if not _fresh(stored):
                stored = None
            try:
                entry.session = self._session(entry, stored)
                await entry.session.start()
                log.info("dhcp: %s: resumed lease %s", entry.key, (stored or {}).get("ack", {}).get("yiaddr"))
            except (DHCPKernelError, KeyError, TypeError, ValueError) as exc:
                log.warning("dhcp: cannot resume lease %s: %s", entry.key, exc)
                entry.session = None

    async def _watch(self) -> None:
        """Stop renewing for containers whose netns or interface vanished; perform queued releases."""
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), TICK)
            try:
                await self._drain_releases()
                for entry in list(self.entries.values()):
                    if entry.session is None or entry.lock.locked():
                        continue
                    gone = netns_identity(entry.record["netns"]) != tuple(entry.record.get("netns_id") or ())
                    if gone or not entry.session.link_present():
                        what = "netns" if gone else "interface"
                        log.warning("dhcp: %s: %s vanished, stopping renewals", entry.key, what)
                        await self._stop_session(entry, release=False)
                        entry.record["status"] = f"stopped: {what} gone"
                        self.store.save(entry.record)
            except Exception:  # the watcher must never die
                log.exception("dhcp: watcher pass failed")

    # --- entry points for the server -------------------------------------------------------------
    async def dispatch(self, req: dict[str, Any]) -> dict[str, Any]:
        """One decoded request -> its reply (raises CNIError)."""
        handlers = {
            "allocate": self.allocate,
            "release": self.release,
            "check": self.check,
            "status": self.status,
            "gc": self.gc,
        }
        op = req.get("op")
        if not isinstance(op, str) or op not in handlers:
            raise _bad(f"unknown op {op!r}")
        return await handlers[op](req)

    async def startup(self) -> None:
        self._load()
        await self._drain_releases()  # releases queued while we were down go before resuming
        await self._resume()

    async def run_watcher(self, stop: asyncio.Event) -> None:
        self._stop = stop
        await self._watch()

    async def shutdown(self) -> None:
        for entry in list(self.entries.values()):
            await self._stop_session(entry, release=False)  # leases stay on disk for the next start
