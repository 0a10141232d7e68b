"""Legacy iptables (x_tables) through python-iptables, one batched session per table.

A `Session` reads one table of one family once, applies every change of an
operation in memory (autocommit off) and commits them in one go. Rules are
written as iptables argument lists (``["-s", "10.0.0.2/32", "-j", "ACCEPT"]``)
and turned into python-iptables objects here, so callers never touch `iptc`.
python-iptables keeps one handle per table name process-wide, so sessions are
serialised by a lock; `transact` runs a session inside a netns (see nsexec).
"""

from __future__ import annotations

import ctypes
import os
import shlex
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from reconciler.kernel.firewall.base import BackendUnavailable, FirewallError
from reconciler.kernel.firewall.nsexec import run_in_netns

T = TypeVar("T")
Args = Sequence[str]
_LOCK = threading.Lock()
_FLAGS = {"-s": "src", "--source": "src", "-d": "dst", "--destination": "dst",
          "-p": "protocol", "--protocol": "protocol", "-i": "in_interface",
          "--in-interface": "in_interface", "-o": "out_interface", "--out-interface": "out_interface"}


LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib/x86_64-linux-gnu",
            "/usr/lib64", "/usr/lib", "/lib64", "/lib")


def _fast_find_library(name: str) -> str | None:
    """ctypes.util.find_library without its subprocesses (ldconfig, gcc): a glob of the usual dirs."""
    import glob

    for libdir in LIB_DIRS:
        # versioned objects first: a bare libfoo.so may be a linker script (libc.so is)
        hits = sorted(glob.glob(os.path.join(libdir, f"lib{name}.so.*")), key=len)
        if hits:
            return hits[0]
    return None


def _iptc() -> Any:
    """Import python-iptables fast (its import shells out to find libraries: ~1 s of a cold ADD)."""
    if "iptc" in sys.modules:
        return sys.modules["iptc"]
    import ctypes.util
    import types

    original = ctypes.util.find_library
    stubs: list[str] = []
    if "distutils.sysconfig" not in sys.modules:  # iptc.util imports it only for get_python_lib
        import sysconfig

        pkg = types.ModuleType("distutils")
        sub = types.ModuleType("distutils.sysconfig")
        sub.get_python_lib = lambda *a, **k: sysconfig.get_path("purelib")  # type: ignore[attr-defined]
        pkg.sysconfig = sub  # type: ignore[attr-defined]
        for mod_name, mod in (("distutils", pkg), ("distutils.sysconfig", sub)):
            if mod_name not in sys.modules:
                sys.modules[mod_name] = mod
                stubs.append(mod_name)
    ctypes.util.find_library = _fast_find_library
    try:
        import iptc  # heavy: loads libxtables; only when a firewall op runs
    except Exception as exc:  # ImportError or a missing shared library
        raise BackendUnavailable(f"python-iptables unusable: {exc}") from exc
    finally:
        ctypes.util.find_library = original
        for mod_name in stubs:
            sys.modules.pop(mod_name, None)
    return iptc


def render(args: Args) -> str:
    """An argument list as a readable iptables command fragment."""
    return " ".join(shlex.quote(a) for a in args)


def _is_option_value(tok: str) -> bool:
    return tok != "!" and not (tok.startswith("-") and len(tok) > 1 and not tok[1].isdigit())


class Session:
    """One table of one family, read once; changes are committed together."""

    def __init__(self, family: int, table: str) -> None:
        iptc = _iptc()
        _preload_extensions()
        self.family = family
        self.table_name = table
        self._iptc = iptc
        cls = iptc.Table if family == 4 else iptc.Table6
        try:
            self._table = cls(table, autocommit=False)
            self._table.refresh()
        except iptc.IPTCError as exc:
            raise BackendUnavailable(f"iptables-legacy table {table} (IPv{family}): {exc}") from exc
        self._rules: dict[str, list[Any]] = {}
        self.dirty = False

    # --- reading -----------------------------------------------------------------
    def chains(self) -> set[str]:
        return {c.name for c in self._table.chains}

    def has_chain(self, chain: str) -> bool:
        return bool(self._table.is_chain(chain))

    def rules(self, chain: str) -> list[Any]:
        """The chain's rules (python-iptables objects), read once per session."""
        if chain not in self._rules:
            if not self.has_chain(chain):
                return []
            self._rules[chain] = list(self._chain(chain).rules)
        return self._rules[chain]

    @staticmethod
    def comment_of(rule: Any) -> str | None:
        """The text of a rule's `-m comment`, read straight from the match buffer."""
        for match in rule.matches:
            if match.name == "comment":
                return _comment_from_buf(match)
        return None

    @staticmethod
    def target_of(rule: Any) -> str:
        target = rule.target
        return target.name if target is not None else ""

    def build(self, args: Args) -> Any:
        """Argument list -> python-iptables Rule (ValueError naming the bad token)."""
        iptc = self._iptc
        rule = iptc.Rule() if self.family == 4 else iptc.Rule6()
        current: Any = None
        invert = False
        i = 0
        try:
            while i < len(args):
                tok = args[i]
                i += 1
                if tok == "!":
                    invert = True
                    continue
                neg = "!" if invert else ""
                invert = False
                if tok in _FLAGS:
                    setattr(rule, _FLAGS[tok], neg + args[i])
                    i += 1
                elif tok in ("-m", "--match"):
                    current = rule.create_match(args[i])
                    i += 1
                elif tok in ("-j", "--jump", "-g", "--goto"):
                    current = rule.create_target(args[i], goto=tok in ("-g", "--goto"))
                    i += 1
                elif tok.startswith("--") and current is not None:
                    values = []
                    while i < len(args) and _is_option_value(args[i]):
                        values.append(args[i])
                        i += 1
                    current.parse(tok[2:], neg + " ".join(values))
                else:
                    raise ValueError(f"unsupported iptables argument {tok!r}")
        except IndexError as exc:
            raise ValueError(f"missing value after {args[i - 1]!r} in {render(args)}") from exc
        except (iptc.IPTCError, iptc.xtables.XTablesError) as exc:
            raise ValueError(f"invalid iptables rule {render(args)}: {exc}") from exc
        return rule

    def same(self, existing: Any, wanted: Any) -> bool:
        """Equal rules: addresses, interfaces, matches (by buffer), target name and saved options."""
        for attr in ("src", "dst", "protocol", "in_interface", "out_interface"):
            if getattr(existing, attr) != getattr(wanted, attr):
                return False
        have, want = existing.matches, wanted.matches
        if len(have) != len(want) or any(a != b for a, b in zip(have, want, strict=True)):
            return False
        if self.target_of(existing) != self.target_of(wanted):
            return False
        return bool(_target_params(existing) == _target_params(wanted))

    def index(self, chain: str, args: Args) -> int:
        """Position of the first rule equal to `args` in `chain`, or -1."""
        wanted = self.build(args)
        for pos, rule in enumerate(self.rules(chain)):
            if self.same(rule, wanted):
                return pos
        return -1

    def has(self, chain: str, args: Args) -> bool:
        return self.index(chain, args) >= 0

    # --- writing -----------------------------------------------------------------
    def _chain(self, chain: str) -> Any:
        return self._iptc.Chain(self._table, chain)

    def _changed(self, chain: str) -> None:
        self.dirty = True
        self._rules.pop(chain, None)

    def ensure_chain(self, chain: str) -> None:
        if not self.has_chain(chain):
            self._table.create_chain(chain)
            self._changed(chain)

    def append_unique(self, chain: str, args: Args) -> bool:
        if self.has(chain, args):
            return False
        self._chain(chain).append_rule(self.build(args))
        self._changed(chain)
        return True

    def insert_unique(self, chain: str, args: Args, position: int = 0) -> bool:
        if self.has(chain, args):
            return False
        self._chain(chain).insert_rule(self.build(args), position)
        self._changed(chain)
        return True

    def replace_rules(self, chain: str, rules: Sequence[Args]) -> bool:
        """Make `chain` hold exactly `rules`, in order; False if it already did."""
        have = self.rules(chain)
        wanted = [self.build(r) for r in rules]
        if len(have) == len(wanted) and all(self.same(h, w) for h, w in zip(have, wanted, strict=True)):
            return False
        if have:
            self._table.flush_entries(chain)
        for rule in wanted:
            self._chain(chain).append_rule(rule)
        self._changed(chain)
        return True

    def delete_where(self, chain: str, pred: Callable[[Any], bool]) -> int:
        """Delete every rule of `chain` for which `pred(rule)` holds; returns the count."""
        victims = [r for r in self.rules(chain) if pred(r)]
        for rule in victims:
            self._chain(chain).delete_rule(rule)
        if victims:
            self._changed(chain)
        return len(victims)

    def delete(self, chain: str, args: Args) -> int:
        wanted = self.build(args)
        return self.delete_where(chain, lambda r: self.same(r, wanted))

    def delete_jumps(self, chain: str, target: str) -> int:
        return self.delete_where(chain, lambda r: self.target_of(r) == target)

    def flush_delete_chain(self, chain: str) -> bool:
        if not self.has_chain(chain):
            return False
        self._table.flush_entries(chain)
        self._table.delete_chain(chain)
        self._changed(chain)
        return True

    def commit(self) -> None:
        if self.dirty:
            try:
                self._table.commit()
            except self._iptc.IPTCError as exc:
                raise FirewallError(f"iptables-legacy commit of {self.table_name} (IPv{self.family}): {exc}") from exc
            self.dirty = False

    def close(self) -> None:
        self._table.close()


class _Head(ctypes.Structure):
    """The common head of libxtables' `struct xtables_match` / `xtables_target` (ABI 12)."""

    _fields_ = [("version", ctypes.c_char_p), ("next", ctypes.c_void_p), ("name", ctypes.c_char_p),
                ("real_name", ctypes.c_char_p), ("revision", ctypes.c_uint8), ("ext_flags", ctypes.c_uint8),
                ("family", ctypes.c_uint16)]


def _walk(head: ctypes.c_void_p) -> list[int]:
    out: list[int] = []
    ptr = head.value
    while ptr:
        out.append(ptr)
        ptr = _Head.from_address(ptr).next
    return out


def _key(ptr: int) -> tuple[bytes, int, int]:
    node = _Head.from_address(ptr)
    return (node.name or b"", node.revision, node.family)


def _prune(head: ctypes.c_void_p, before: set[int], family: int, known: set[tuple[bytes, int, int]]) -> None:
    """Unlink entries added since `before` of another family, or already registered."""
    prev: int | None = None
    for ptr in _walk(head):
        node = _Head.from_address(ptr)
        if ptr not in before and (node.family not in (family, 0) or _key(ptr) in known):
            if prev is None:
                head.value = node.next
            else:
                _Head.from_address(prev).next = node.next
            continue
        prev = ptr


# Extensions our rules use. Loaded for both families before the first lookup.
EXTENSIONS = ("standard", "comment", "multiport", "addrtype", "mark", "MARK", "conntrack",
              "tcp", "udp", "sctp", "NAT")
_preloaded = False


def _preload_extensions() -> None:
    """Register our extensions for IPv4 and IPv6 in this process, once.

    libxtables keeps only the current family's registrations when an
    extension's shared object is loaded (libxt_NAT.so loaded while IPv4 is
    active never yields the IPv6 DNAT/MASQUERADE) and never loads it again,
    so one process cannot normally use both `Rule` and `Rule6`. Before any
    lookup, load a private copy of each object per family (its constructor
    registers fresh structs) and unlink what the copy added for the other
    family or what is registered already (libxtables exits on duplicates).
    Extensions outside this list work for the family that loads them first.
    """
    global _preloaded
    if _preloaded:
        return
    _preloaded = True
    import shutil
    import tempfile

    from iptc import xtables as xt

    lists = (xt.xtables._xtables_pending_matches, xt.xtables._xtables_pending_targets)
    done = (xt.xtables._xtables_matches, xt.xtables._xtables_targets)
    if not all(isinstance(h, ctypes.c_void_p) for h in lists + done):
        return
    with tempfile.TemporaryDirectory(prefix="rcn-xt-") as tmp:
        for name in EXTENSIONS:
            path = os.path.join(xt._xtables_libdir, f"libxt_{name}.so")
            if not os.path.exists(path):
                continue
            for proto in (xt.NFPROTO_IPV4, xt.NFPROTO_IPV6):
                before = [set(_walk(h)) for h in lists]
                known = {_key(p) for h in lists + done for p in _walk(h)}  # never register twice
                copy = os.path.join(tmp, f"{proto}-{name}.so")
                shutil.copyfile(path, copy)
                xt.xtables._xtables_set_nfproto(proto)
                _KEEP.append(ctypes.CDLL(copy))  # its constructor registers; the mapping outlives the file
                for head, seen in zip(lists, before, strict=True):
                    _prune(head, seen, proto, known)


_KEEP: list[ctypes.CDLL] = []


def _target_params(rule: Any) -> dict[str, Any]:
    target = rule.target
    if target is None or target.name in ("", "ACCEPT", "DROP", "RETURN", "QUEUE") or target.name.startswith("CNI-"):
        return {}
    try:
        return dict(target.get_all_parameters())
    except Exception:
        return {}


def _comment_from_buf(match: Any) -> str | None:
    try:
        from iptc.xtables import xt_entry_match

        base = ctypes.sizeof(xt_entry_match)
        raw = bytes(match.match_buf[base : base + 256])
        return raw.split(b"\0", 1)[0].decode(errors="replace")
    except Exception:
        return None


def transact(netns: str | None, family: int, table: str, fn: Callable[[Session], T]) -> T:
    """Run `fn(session)` on one table in `netns`; commit its changes if it returns normally."""

    def body() -> T:
        with _LOCK:
            session = Session(family, table)
            try:
                result = fn(session)
                session.commit()
                return result
            finally:
                session.close()

    return run_in_netns(netns, body)


def usable(family: int = 4, netns: str | None = None) -> bool:
    """True if legacy iptables for `family` works here (library present, nat table loads)."""
    try:
        transact(netns, family, "nat", lambda s: None)
    except (BackendUnavailable, FirewallError, OSError):
        return False
    return True
