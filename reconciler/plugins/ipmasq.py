"""ipMasq for bridge and ptp, through the firewall backend (imported only when a config asks for it)."""

from __future__ import annotations

import ipaddress
from typing import Any

from reconciler.errors import INTERNAL, CNIError

Address = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def _module() -> Any:
    from reconciler.kernel.firewall import masquerade

    return masquerade


def setup(network: str, container_id: str, ifname: str, addresses: list[Address], backend: str | None,
          host_netns: str | None) -> None:
    try:
        _module().setup(network, container_id, ifname, addresses, backend, netns=host_netns)
    except CNIError:
        raise
    except Exception as exc:
        raise CNIError(INTERNAL, f"failed to set up IP masquerading: {exc}") from exc


def teardown(network: str, container_id: str, ifname: str, addresses: list[Address],
             host_netns: str | None) -> None:
    try:
        _module().teardown(network, container_id, ifname, addresses, netns=host_netns)
    except CNIError:
        raise
    except Exception as exc:
        raise CNIError(INTERNAL, f"failed to tear down IP masquerading: {exc}") from exc


def check(network: str, container_id: str, ifname: str, addresses: list[Address], backend: str | None,
          host_netns: str | None) -> None:
    from reconciler.kernel.firewall.base import RuleDrift

    try:
        _module().check(network, container_id, ifname, addresses, backend, netns=host_netns)
    except CNIError:
        raise
    except RuleDrift as exc:  # says what drifted, "ipMasq: ..." included
        raise CNIError(INTERNAL, str(exc)) from exc
    except Exception as exc:
        raise CNIError(INTERNAL, f"ipMasq: {exc}") from exc


def gc(network: str, valid: set[tuple[str, str]], host_netns: str | None) -> None:
    try:
        _module().gc(network, valid, netns=host_netns)
    except CNIError:
        raise
    except Exception as exc:
        raise CNIError(INTERNAL, f"ipMasq GC: {exc}") from exc


def valid_attachments(config: dict[str, Any]) -> set[tuple[str, str]]:
    """`cni.dev/valid-attachments` as {(containerID, ifname)}."""
    out: set[tuple[str, str]] = set()
    for item in config.get("cni.dev/valid-attachments") or config.get("cni.dev/attachments") or []:
        if isinstance(item, dict):
            out.add((str(item.get("containerID", "")), str(item.get("ifname", ""))))
    return out
