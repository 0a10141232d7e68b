"""The launcher <-> daemon wire format: small, binary, standard library only.

Request:  b"RCN1" + u32 count + count x (u32 length + bytes), the fields being
          plugin type, stdin, then alternating environment keys and values (the
          caller's whole environment: a cold run, and the IPAM plugins it execs, see
          all of it, so the daemon must too).
          The request's first bytes may carry one file descriptor (SCM_RIGHTS): the
          caller's stderr, where the daemon writes what a cold run would write to it.
Reply:    u32 exit status + u32 length + the plugin's stdout, byte for byte.
All integers big-endian. Requests over MAX_REQUEST bytes are refused.
No `struct` (int.to_bytes does it): this module is on the launcher's start-up path.
"""

MAGIC = b"RCN1"
MAX_REQUEST = 4 * 1024 * 1024
MAX_FIELDS = 8192  # the launchers run cold beyond this (an environment of > 4095 variables)


class WireError(ValueError):
    """A malformed or oversized request."""


class Request:
    """One decoded request (a plain class: this module is on the launcher's start-up path)."""

    __slots__ = ("plugin_type", "stdin", "env")

    def __init__(self, plugin_type: str, stdin: bytes, env: dict[str, str]) -> None:
        self.plugin_type = plugin_type
        self.stdin = stdin
        self.env = env


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def encode_request(plugin_type: str, stdin: bytes, env: dict[str, str] | dict[bytes, bytes]) -> bytes:
    """`env` as str or as bytes (the launcher passes `posix.environ`'s bytes through untouched)."""
    fields = [plugin_type.encode(), stdin]
    for key, value in env.items():
        fields += [key if isinstance(key, bytes) else key.encode(),
                   value if isinstance(value, bytes) else value.encode()]
    body = b"".join(_u32(len(f)) + f for f in fields)
    return MAGIC + _u32(len(fields)) + body


def read_request(stream, head: bytes = b"") -> Request:  # noqa: ANN001 - a binary file object
    """Decode a request from `stream`; `head`: its first bytes, when already read from the socket."""
    read = stream.read
    magic = head + read(4 - len(head))
    if len(magic) != 4:
        raise WireError("truncated request")
    if magic != MAGIC:
        raise WireError("bad magic")
    prefix = read(4)
    if len(prefix) != 4:
        raise WireError("truncated request")
    count = int.from_bytes(prefix, "big")
    if count < 2 or count > MAX_FIELDS or count % 2:
        raise WireError(f"bad field count {count}")
    fields = []
    left = MAX_REQUEST - 8
    for _ in range(count):  # inline, no helper per read: an environment is ~100 fields
        prefix = read(4)
        size = int.from_bytes(prefix, "big")
        left -= 4 + size
        if len(prefix) != 4:
            raise WireError("truncated request")
        if left < 0:
            raise WireError(f"request exceeds {MAX_REQUEST} bytes")
        data = read(size)
        if len(data) != size:
            raise WireError("truncated request")
        fields.append(data)
    try:
        ptype = fields[0].decode()
    except UnicodeDecodeError as exc:
        raise WireError("the plugin type must be UTF-8") from exc
    if not ptype or "/" in ptype:
        raise WireError(f"bad plugin type {ptype!r}")
    # as os.environ decodes the environment: a variable that is not UTF-8 round-trips unchanged
    env = {fields[i].decode(errors="surrogateescape"): fields[i + 1].decode(errors="surrogateescape")
           for i in range(2, count, 2)}
    return Request(ptype, fields[1], {k: v for k, v in env.items() if k and "=" not in k and "\0" not in k + v})


def send_request(sock, request: bytes, stderr: int | None = 2) -> None:  # noqa: ANN001 - a _socket.socket
    """Send `request` with the descriptor `stderr` attached to its first bytes (None: without)."""
    sent = 0
    if stderr is not None:
        import _socket
        import sys

        sent = sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, stderr.to_bytes(4, sys.byteorder))])
    sock.sendall(memoryview(request)[sent:])


def write_reply(sock, code: int, out: bytes) -> None:  # noqa: ANN001 - a socket.socket
    sock.sendall(_u32(code) + _u32(len(out)) + out)


def read_reply(sock) -> tuple[int, bytes]:  # noqa: ANN001 - a _socket.socket
    """(exit status, stdout) from the daemon; ConnectionError if it hung up."""
    head = _recv_exact(sock, 8)
    code, size = int.from_bytes(head[:4], "big"), int.from_bytes(head[4:], "big")
    return code, _recv_exact(sock, size)


def _recv_exact(sock, size: int) -> bytes:  # noqa: ANN001
    chunks = []
    while size:
        chunk = sock.recv(min(size, 65536))
        if not chunk:
            raise ConnectionError("daemon closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)
