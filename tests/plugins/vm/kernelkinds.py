"""Probe the running kernel for link kinds (module autoload included), for kernelvm skips."""

from __future__ import annotations

import functools
import subprocess
import uuid

PROBE_ARGS: dict[str, tuple[str, ...]] = {
    "dummy": ("type", "dummy"),
    "ipvlan": ("link", "{parent}", "type", "ipvlan", "mode", "l2"),
    "vlan": ("link", "{parent}", "type", "vlan", "id", "7"),
    "vrf": ("type", "vrf", "table", "7"),
    "macvlan": ("link", "{parent}", "type", "macvlan", "mode", "bridge"),
}


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


@functools.cache
def kind_unavailable(kind: str) -> str | None:
    """None when the kernel can create a `kind` link, else why not."""
    ns = f"rcn-probe-{uuid.uuid4().hex[:6]}"
    if _ip("netns", "add", ns).returncode != 0:
        return "cannot create a network namespace (not root?)"
    try:
        # a veth end is the parent for the kinds that need one (veth exists everywhere we run)
        made = _ip("-n", ns, "link", "add", "rcnpp", "type", "veth", "peer", "name", "rcnpq")
        if made.returncode != 0:
            return f"veth unavailable: {made.stderr.strip()}"
        args = [a.format(parent="rcnpp") for a in PROBE_ARGS[kind]]
        res = _ip("-n", ns, "link", "add", "rcnprobe", *args)
        if res.returncode != 0:
            return f"kernel {_uname()} lacks {kind} links ({res.stderr.strip()}); runs in tests/vm/run.sh"
        return None
    finally:
        _ip("netns", "delete", ns)


def _uname() -> str:
    return subprocess.run(["uname", "-r"], capture_output=True, text=True, check=False).stdout.strip()
