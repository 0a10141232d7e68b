"""resolv.conf -> result DNS, as the reference host-local reads `resolvConf`."""

from __future__ import annotations

from reconciler.cni.types import DNS
from reconciler.errors import INVALID_NETWORK_CONFIG, CNIError


def parse_resolv_conf(path: str) -> DNS:
    """`nameserver`, `domain`, `search` and `options` lines; comments and junk ignored."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise CNIError(
            INVALID_NETWORK_CONFIG, f"invalid network config: ipam.resolvConf: cannot read {path}", str(exc)
        ) from exc
    nameservers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    domain: str | None = None
    for line in lines:
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        fields = line.split()
        if len(fields) < 2:
            continue
        key = fields[0]
        if key == "nameserver":
            nameservers.append(fields[1])
        elif key == "domain":
            domain = fields[1]
        elif key == "search":
            search += fields[1:]
        elif key == "options":
            options += fields[1:]
    return DNS(nameservers=nameservers or None, domain=domain, search=search or None, options=options or None)
