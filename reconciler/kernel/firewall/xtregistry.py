"""Making python-iptables usable for IPv4 and IPv6 in one process, and cheap to import.

Two workarounds for libxtables/python-iptables behaviour, kept apart from the
rule logic in `iptables.py`:
- libxtables registers an extension only for the address family that is active
  when its shared object is loaded, and loads each object once; `preload`
  registers ours for both families from private copies.
- python-iptables locates its libraries through `ctypes.util.find_library`,
  which runs ldconfig/gcc subprocesses (about a second of a cold plugin run);
  `import_iptc` swaps in a directory glob while it imports.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib/x86_64-linux-gnu",
            "/usr/lib64", "/usr/lib", "/lib64", "/lib")


def _fast_find_library(name: str) -> str | None:
    """ctypes.util.find_library without its subprocesses: a glob of the usual dirs."""
    import glob

    for libdir in LIB_DIRS:
        # versioned objects first: a bare libfoo.so may be a linker script (libc.so is)
        hits = sorted(glob.glob(os.path.join(libdir, f"lib{name}.so.*")), key=len)
        if hits:
            return hits[0]
    return None


def import_iptc() -> Any:
    """Import python-iptables without its slow library search (and its distutils import)."""
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
        import iptc
    finally:
        ctypes.util.find_library = original
        for mod_name in stubs:
            sys.modules.pop(mod_name, None)
    return iptc


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


def preload() -> None:
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
