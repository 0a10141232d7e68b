"""nftables through libnftables' JSON API (a small ctypes binding).

Why this and not the alternatives: libnftables is the library the `nft` tool
itself is built on, so its JSON schema is stable and complete (nat, fib,
masquerade, comments) and it is already on every host that has nftables
(Debian `libnftables1`). pyroute2's nftables support is a low-level netlink
message layer without an expression compiler (no fib/nat/masquerade
builders, sparse documentation), and Debian's `python3-nftables` is a thin
wrapper of the same library that lives outside our virtualenv, so ~80 lines of
ctypes are both the smaller dependency and the better-kept path.
"""

from __future__ import annotations

import ctypes
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from reconciler.kernel.firewall.base import BackendUnavailable, FirewallError
from reconciler.kernel.firewall.nsexec import run_in_netns

T = TypeVar("T")
OUTPUT_HANDLE = 1 << 3
OUTPUT_JSON = 1 << 4
_lib: ctypes.CDLL | None = None
_LIB_LOCK = threading.Lock()


def _library() -> ctypes.CDLL:
    global _lib
    with _LIB_LOCK:
        if _lib is None:
            try:
                lib = ctypes.CDLL("libnftables.so.1")
            except OSError as exc:
                raise BackendUnavailable(f"libnftables not found: {exc}") from exc
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
            _lib = lib
        return _lib


class NftNotFound(FirewallError):
    """The table/chain asked for does not exist."""


@dataclass
class TableView:
    """One table as listed: chains by name and their rules (JSON objects with handles)."""

    family: str
    name: str
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)
    rules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def chain_rules(self, chain: str) -> list[dict[str, Any]]:
        return self.rules.get(chain, [])


class Nft:
    """A libnftables context (create it in the netns it should act on)."""

    def __init__(self) -> None:
        self._lib = _library()
        self._ctx = self._lib.nft_ctx_new(0)
        if not self._ctx:
            raise BackendUnavailable("nft_ctx_new failed")
        self._lib.nft_ctx_output_set_flags(self._ctx, OUTPUT_JSON | OUTPUT_HANDLE)
        self._lib.nft_ctx_buffer_output(self._ctx)
        self._lib.nft_ctx_buffer_error(self._ctx)

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def _run(self, text: str) -> str:
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
        out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
        err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        if rc != 0:
            if "No such file or directory" in err:
                raise NftNotFound(err.strip())
            raise FirewallError(f"nftables: {err.strip() or 'command failed'}")
        return out

    def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Apply a list of JSON commands as one atomic transaction."""
        if not commands:
            return []
        out = self._run(json.dumps({"nftables": commands}))
        return json.loads(out).get("nftables", []) if out.strip() else []

    def run_text(self, script: str) -> None:
        """Apply an nft script (the `nft -f` language) as one atomic transaction."""
        self._run(script)

    def table(self, family: str, name: str) -> TableView | None:
        """The table with its chains and rules, or None if it does not exist."""
        try:
            items = self.run([{"list": {"table": {"family": family, "name": name}}}])
        except NftNotFound:
            return None
        view = TableView(family, name)
        for item in items:
            if "chain" in item:
                view.chains[item["chain"]["name"]] = item["chain"]
            elif "rule" in item:
                view.rules.setdefault(item["rule"]["chain"], []).append(item["rule"])
        return view


def transact(netns: str | None, fn: Callable[[Nft], T]) -> T:
    """Run `fn(nft)` with a fresh context inside `netns`."""

    def body() -> T:
        nft = Nft()
        try:
            return fn(nft)
        finally:
            nft.close()

    return run_in_netns(netns, body)


def usable(netns: str | None = None) -> bool:
    """True if libnftables loads and can talk to the kernel here."""
    try:
        transact(netns, lambda nft: nft.run([{"list": {"tables": {}}}]))
    except (BackendUnavailable, FirewallError, OSError):
        return False
    return True


def rule_delete(rule: dict[str, Any]) -> dict[str, Any]:
    """The JSON command deleting a listed rule (by handle)."""
    return {"delete": {"rule": {"family": rule["family"], "table": rule["table"],
                                "chain": rule["chain"], "handle": rule["handle"]}}}
