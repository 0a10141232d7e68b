"""The plugin <-> daemon protocol: one JSON request and one JSON reply per connection.

Each message is a 4-byte big-endian length followed by that many bytes of
UTF-8 JSON (an object). Messages over `MAX_MESSAGE` are refused. Requests:
``{"op": "allocate"|"release"|"check"|"status", ...}``; replies:
``{"ok": true, ...}`` or ``{"ok": false, "code": N, "msg": "...", "details": "..."}``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

MAX_MESSAGE = 64 * 1024
HEADER = struct.Struct("!I")


class ProtocolError(ValueError):
    """A malformed or oversized message."""


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message).encode()
    if len(body) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(body)} bytes exceeds {MAX_MESSAGE}")
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ProtocolError("not a JSON object")
    return data


def check_size(size: int) -> None:
    if size > MAX_MESSAGE:
        raise ProtocolError(f"message of {size} bytes exceeds {MAX_MESSAGE}")


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any]:
    """Daemon side: read one message (raises ProtocolError, asyncio.IncompleteReadError)."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    check_size(size)
    return decode(await reader.readexactly(size))


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 65536))
        if not chunk:
            raise ConnectionError("dhcp daemon closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def call(path: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Plugin side: send `request` to the daemon at `path` and return its reply.

    Raises FileNotFoundError / ConnectionRefusedError when no daemon listens,
    TimeoutError when it does not answer in time.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(encode(request))
        (size,) = HEADER.unpack(_recv_exact(sock, HEADER.size))
        check_size(size)
        return decode(_recv_exact(sock, size))
    finally:
        sock.close()
