"""dhcp IPAM: addresses from the network's DHCP server, held by a lease daemon.

The verbs here are the thin client side: they talk to the daemon (`daemon.py`)
over its unix socket with our own JSON protocol (`wire.py`). Start the daemon
with the installed executable (``dhcp daemon -socketpath PATH``) or
``reconciler dhcp daemon --socket-path PATH``.

Differences from the reference, on purpose: DEL succeeds while the daemon is
down (the release is queued on disk and performed when it starts); CHECK
only verifies the lease is held and renewing (it never acquires one); STATUS
reports whether the daemon is reachable.
"""

from __future__ import annotations

import logging
from typing import Any

from reconciler.cni.args import CmdArgs
from reconciler.cni.types import Result
from reconciler.errors import INTERNAL, NOT_AVAILABLE, TRY_AGAIN_LATER, CNIError

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
REPLY_MARGIN = 10.0

log = logging.getLogger(__name__)


def _conf(args: CmdArgs) -> Any:
    from reconciler.plugins.ipam.dhcp.config import DHCPNetConf

    return args.conf(DHCPNetConf).ipam


def _key(args: CmdArgs) -> str:
    from reconciler.plugins.ipam.dhcp.config import client_id

    return client_id(args.container_id, args.network_name, args.ifname)


def _not_running(path: str, exc: Exception) -> CNIError:
    return CNIError(
        TRY_AGAIN_LATER,
        f"dhcp daemon not running at {path}; start it with `dhcp daemon -socketpath {path}`"
        f" or `reconciler dhcp daemon --socket-path {path}`",
        str(exc),
    )


def _call(path: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    from reconciler.plugins.ipam.dhcp import wire

    try:
        reply = wire.call(path, request, timeout)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise _not_running(path, exc) from exc
    except TimeoutError as exc:
        raise CNIError(TRY_AGAIN_LATER, f"dhcp daemon at {path} did not answer within {timeout:g}s") from exc
    except (OSError, ValueError) as exc:
        raise CNIError(INTERNAL, f"talking to the dhcp daemon at {path} failed", str(exc)) from exc
    if not reply.get("ok"):
        raise CNIError(
            int(reply.get("code") or INTERNAL), str(reply.get("msg", "")), str(reply.get("details", ""))
        )
    return reply


def add(args: CmdArgs) -> Result:
    """Ask the daemon for a lease on CNI_IFNAME inside CNI_NETNS."""
    from reconciler.plugins.ipam.dhcp.config import DEFAULT_TIMEOUT, absolute_netns, session_options
    from reconciler.plugins.ipam.dhcp.leaseinfo import to_result

    ipam = _conf(args)
    options = session_options(args, ipam)
    request = {
        "op": "allocate",
        "key": _key(args),
        "container_id": args.container_id,
        "network": args.network_name,
        "ifname": args.ifname,
        "netns": absolute_netns(args.netns),
        "options": options,
    }
    timeout = (ipam.timeout or DEFAULT_TIMEOUT) + REPLY_MARGIN
    reply = _call(ipam.daemon_socket_path, request, timeout)
    return to_result(reply["lease"], ipam.priority)


def delete(args: CmdArgs) -> None:
    """Release the lease; queue the release on disk when the daemon is unreachable."""
    from reconciler.plugins.ipam.dhcp.store import LeaseStore, state_dir_for

    ipam = _conf(args)
    request = {"op": "release", "key": _key(args)}
    try:
        _call(ipam.daemon_socket_path, request, 30.0)
        return
    except CNIError as err:
        if err.code != TRY_AGAIN_LATER:
            log.warning("dhcp: release of %s failed: %s", request["key"], err)
            return
    path = LeaseStore(state_dir_for(ipam.daemon_socket_path)).queue_release(request)
    log.warning("dhcp: daemon unreachable; release of %s queued in %s", request["key"], path)


def check(args: CmdArgs) -> None:
    """The lease must be held and renewing (and match prevResult's address, if any)."""
    ipam = _conf(args)
    prev = args.config.get("prevResult") or {}
    addresses = [
        ip.get("address") for ip in prev.get("ips", []) if isinstance(ip, dict) and ip.get("address")
    ]
    request = {"op": "check", "key": _key(args), "addresses": addresses}
    _call(ipam.daemon_socket_path, request, 30.0)


def gc(args: CmdArgs) -> None:
    """Release this network's leases held for attachments not in `cni.dev/valid-attachments`."""
    from reconciler.plugins.ipam.dhcp.config import client_id

    ipam = _conf(args)
    valid = args.config.get("cni.dev/valid-attachments") or []
    keys = [
        client_id(str(a.get("containerID", "")), args.network_name, str(a.get("ifname", "")))
        for a in valid
        if isinstance(a, dict)
    ]
    _call(ipam.daemon_socket_path, {"op": "gc", "network": args.network_name, "valid": keys}, 60.0)


def status(args: CmdArgs) -> None:
    """Available when the daemon answers on its socket."""
    ipam = _conf(args)
    try:
        _call(ipam.daemon_socket_path, {"op": "status"}, 10.0)
    except CNIError as err:
        raise CNIError(
            NOT_AVAILABLE, f"dhcp daemon unreachable at {ipam.daemon_socket_path}", err.msg
        ) from err


def daemon_main(argv: list[str]) -> int:
    """`dhcp daemon [flags]` (the reference's flags, plus GNU-style long names)."""
    from reconciler.plugins.ipam.dhcp.cli import main

    return main(argv)
