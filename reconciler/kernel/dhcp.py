"""DHCPv4 client sessions on an interface inside another network namespace.

Wraps pyroute2's asyncio DHCP client (`pyroute2.dhcp.client`): it does the
packets, the state machine, and the T1/T2/expiry timers. What this module adds:

- the raw socket is created *inside* the container's netns (`netns.entered`
  moves the calling thread there and back; the socket keeps its namespace
  afterwards), and the link is set up there first;
- arbitrary options to provide (code -> bytes), a fixed client identifier,
  the broadcast flag as configured;
- lease persistence through a callback (the caller owns the store), and
  restoring a stored lease so that a restarted daemon re-binds (INIT-REBOOT)
  instead of losing the address.

It knows nothing of CNI: it takes paths, names, option codes and bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reconciler.kernel import netns as nsmod

log = logging.getLogger(__name__)

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFHWADDR = 0x8927
SIOCGIFINDEX = 0x8933
IFF_UP = 0x1
ETH_P_ALL = 3
BOUND_STATES = ("BOUND", "RENEWING", "REBINDING")

class DHCPKernelError(OSError):
    """A namespace or interface problem while running a DHCP client."""


def netns_identity(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a netns file, None if it is gone (or no path is given)."""
    return nsmod.identity(path) if path else None


def open_packet_socket(netns: str, ifname: str) -> int:
    """A raw AF_PACKET socket bound to `ifname` inside `netns` (link set up first); returns its fd.

    Only the socket's creation happens inside the namespace (`netns.entered`, which moves the
    calling thread there and back before it returns); the socket keeps that namespace for its
    lifetime, so the ioctls and the bind that follow act there from any thread.
    """
    try:
        with nsmod.entered(netns):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    except nsmod.NetnsNotFound as exc:
        raise DHCPKernelError(exc.code, f"cannot enter netns {netns}: {exc.msg}") from exc
    except OSError as exc:
        raise DHCPKernelError(exc.errno, f"no packet socket in {netns}: {exc.strerror}") from exc
    try:
        _set_link_up(sock, ifname)
        sock.bind((ifname, ETH_P_ALL))
    except OSError as exc:
        sock.close()
        raise DHCPKernelError(exc.errno, f"interface {ifname} in {netns}: {exc.strerror}") from exc
    return sock.detach()


def _ifreq(ifname: str, payload: bytes = b"") -> bytes:
    return struct.pack("16s", ifname.encode()) + payload.ljust(24, b"\0")


def _set_link_up(sock: socket.socket, ifname: str) -> None:
    res = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, _ifreq(ifname))
    (flags,) = struct.unpack("H", res[16:18])
    if not flags & IFF_UP:
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, _ifreq(ifname, struct.pack("H", flags | IFF_UP)))


def _hwaddr(sock: socket.socket, ifname: str) -> str:
    res = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, _ifreq(ifname))
    return ":".join(f"{b:02x}" for b in res[18:24])


def link_present(sock: socket.socket, ifname: str) -> bool:
    """Whether `ifname` still exists in the socket's namespace."""
    try:
        fcntl.ioctl(sock.fileno(), SIOCGIFINDEX, _ifreq(ifname))
    except OSError as exc:
        if exc.errno in (errno.ENODEV, errno.ENXIO):
            return False
        raise
    return True


@dataclass
class SessionSpec:
    """What one DHCP session needs: where, who, and which options."""

    netns: str
    ifname: str
    client_id: bytes
    requested: tuple[int, ...]
    provide: dict[int, bytes] = field(default_factory=dict)
    broadcast: bool = True
    resend_max: float = 16.0


# A stored lease is {"ack": {"yiaddr": ..., "options": {...}}, "server_mac": ..., "obtained": ...}.
LeaseDict = dict[str, Any]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return list(value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)  # IntEnum -> int
    if isinstance(value, float):
        return value
    return str(value)


class DHCPSession:
    """One interface's lease: acquire, keep renewing (T1/T2), release on stop."""

    def __init__(
        self,
        spec: SessionSpec,
        stored: LeaseDict | None = None,
        on_change: Callable[[str, LeaseDict | None], None] | None = None,
    ) -> None:
        self.spec = spec
        self._stored = stored
        self._on_change = on_change or (lambda event, lease: None)
        self._client: Any = None
        self._stopping = False
        self.last_event = "new"

    # --- lifecycle -------------------------------------------------------------------------------
    async def open(self) -> None:
        """Open the socket in the netns (and load the stored lease) without sending anything."""
        client = _make_client(self)
        try:
            await client.__aenter__()
        except OSError as exc:
            raise DHCPKernelError(
                exc.errno or errno.EIO, f"{self.spec.ifname} in {self.spec.netns}: {exc}"
            ) from exc
        self._client = client

    async def start(self) -> None:
        """Open, then send DISCOVER (or an INIT-REBOOT REQUEST for a stored lease)."""
        await self.open()
        await self._client.bootstrap()

    async def wait_bound(self, timeout: float) -> LeaseDict:
        """Wait until a lease is held; raises TimeoutError."""
        assert self._client is not None
        from pyroute2.dhcp.fsm import State

        await self._client.wait_for_state(State.BOUND, timeout=timeout)
        lease = self.lease
        assert lease is not None
        return lease

    async def stop(self, release: bool) -> None:
        """Stop renewing; send DHCPRELEASE first when `release` and a lease is held."""
        client, self._client = self._client, None
        if client is None:
            return
        self._stopping = True
        client.config.release = release and client.lease is not None
        try:
            await asyncio.wait_for(client.__aexit__(None, None, None), timeout=5)
        except (TimeoutError, OSError) as exc:
            log.warning("dhcp: stopping client on %s in %s: %s", self.spec.ifname, self.spec.netns, exc)

    # --- state -----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._client is not None

    @property
    def state(self) -> str:
        return self._client.state.name if self._client is not None else "OFF"

    @property
    def lease(self) -> LeaseDict | None:
        if self._client is None or self._client.lease is None:
            return None
        return lease_to_dict(self._client.lease)

    def link_present(self) -> bool:
        sock = self._client._sock if self._client is not None else None
        if sock is None or sock.fileno() < 0:
            return False
        return link_present(sock, self.spec.ifname)

    # --- callbacks from pyroute2 -------------------------------------------------------------------
    def _dumped(self, lease: Any) -> None:
        self._on_change("lease", lease_to_dict(lease))

    def _initial(self) -> Any:
        return self._stored

    async def _hook(self, trigger: str, lease: Any) -> None:
        if self._stopping:
            return
        self.last_event = trigger
        self._on_change(trigger, lease_to_dict(lease) if lease is not None else None)


def lease_to_dict(lease: Any) -> LeaseDict:
    ack = lease.ack
    return {
        "ack": {"yiaddr": ack["yiaddr"], "options": _jsonable(dict(ack["options"]))},
        "server_mac": lease.server_mac,
        "obtained": lease.obtained,
    }


def lease_remaining(lease: LeaseDict) -> float | None:
    """Seconds until the stored lease expires (None = infinite)."""
    lt = lease["ack"]["options"].get("lease_time")
    if lt is None or lt == -1:
        return None
    return float(lease["obtained"]) + float(lt) - time.time()


def _make_client(session: DHCPSession) -> Any:
    """Build pyroute2's client for `session` (imports pyroute2 lazily)."""
    from pyroute2.dhcp import CodeMapping
    from pyroute2.dhcp.client import AsyncDHCPClient, ClientConfig, randomized_increasing_backoff
    from pyroute2.dhcp.dhcp4socket import AsyncDHCP4Socket, listen_udp_port
    from pyroute2.dhcp.enums import bootp
    from pyroute2.dhcp.hooks import Hook, Trigger
    from pyroute2.dhcp.leases import Lease
    from pyroute2.ext import bpf

    spec = session.spec

    class SessionLease(Lease):
        def dump(self) -> None:
            session._dumped(self)

        @classmethod
        def load(cls, interface: str) -> Any:
            stored = session._initial()
            if not stored:
                return None
            return cls(
                ack=stored["ack"],
                interface=interface,
                server_mac=stored["server_mac"],
                obtained=stored["obtained"],
            )

    class NetnsSocket(AsyncDHCP4Socket):
        """The client's raw socket, opened inside the container netns."""

        async def __aenter__(self) -> NetnsSocket:
            fd = open_packet_socket(spec.netns, spec.ifname)
            socket.socket.__init__(self, fileno=fd)
            self.setblocking(False)
            self.ifindex = self.getsockname()[1]
            self.l2addr = _hwaddr(self, spec.ifname)
            self.clear_buffer()
            fstring, self.fprog = bpf.compile(listen_udp_port(self.port))
            self.setsockopt(socket.SOL_SOCKET, 26, fstring)  # SO_ATTACH_FILTER
            return self

        async def __aexit__(self, *_: Any) -> None:
            self.close()

        async def put(self, msg: Any) -> Any:
            with contextlib.suppress(OSError):  # the MAC may change after ADD (tuning)
                self.l2addr = _hwaddr(self, spec.ifname)
            msg.eth_src = None
            return await super().put(msg)

    class Client(AsyncDHCPClient):
        async def _send_message(self, msg: Any) -> None:
            dhcp = msg.dhcp
            for code, value in spec.provide.items():
                name = f"rcn_option_{code}"
                # pyroute2 encodes only options it has a name for: register ours on this message.
                dhcp._encode_map[name] = CodeMapping(name=name, code=code, format="array8")
                dhcp["options"][name] = list(value)
            if not spec.broadcast and dhcp["flags"] == bootp.Flag.BROADCAST:
                dhcp["flags"] = bootp.Flag.UNICAST
            await super()._send_message(msg)

    def hook_for(trigger: Any) -> Hook:
        async def func(lease: Any) -> None:
            await session._hook(str(trigger), lease)

        func.__name__ = f"rcn_{trigger}"
        return Hook(func=func, triggers={trigger})

    config = ClientConfig(
        interface=spec.ifname,
        lease_type=SessionLease,
        hooks=[hook_for(t) for t in Trigger],
        requested_parameters=spec.requested,  # type: ignore[arg-type]
        retransmission=lambda: randomized_increasing_backoff(wait_first=2.0, wait_max=spec.resend_max),
        write_pidfile=False,
        release=True,
        client_id=spec.client_id,
        handle_signals=False,
        vendor_id=None,
        host_name=None,
    )
    client = Client(config)
    client._sock = NetnsSocket(spec.ifname)
    return client
