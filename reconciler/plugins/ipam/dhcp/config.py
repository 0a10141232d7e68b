"""The dhcp IPAM section, validated, and the per-attachment DHCP options derived from it."""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, field_validator

from reconciler.cni.args import CmdArgs
from reconciler.cni.model import CNIModel
from reconciler.errors import config_error

DEFAULT_SOCKET = "/run/cni/dhcp.sock"
DEFAULT_TIMEOUT = 30.0
MAX_CLIENT_ID = 254

# Option names the reference accepts, plus a few common ones; decimal codes are accepted too.
OPTION_NAMES: dict[str, int] = {
    "subnet-mask": 1,
    "routers": 3,
    "domain-name-servers": 6,
    "host-name": 12,
    "domain-name": 15,
    "interface-mtu": 26,
    "static-routes": 33,
    "vendor-class-identifier": 60,
    "dhcp-client-identifier": 61,
    "user-class": 77,
    "classless-static-routes": 121,
}
CLIENT_ID = 61
# What we always ask for unless a `request` entry says skipDefault: the address, the
# gateway, both route options, and the lease timers.
DEFAULT_REQUEST = (1, 3, 33, 121, 51, 58, 59)


class RequestOption(CNIModel):
    skip_default: bool = False
    option: str | int = ""


class ProvideOption(CNIModel):
    option: str | int
    value: str | None = None
    from_arg: str | None = None


class DHCPIPAM(CNIModel):
    type: str = "dhcp"
    daemon_socket_path: str = DEFAULT_SOCKET
    request: list[RequestOption] = Field(default_factory=list)
    provide: list[ProvideOption] = Field(default_factory=list)
    priority: int | None = None
    broadcast: bool | None = None
    timeout: float | None = None

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float | None) -> float | None:
        if v is not None and not 0 < v <= 3600:
            raise ValueError("must be between 0 and 3600 seconds")
        return v

    @field_validator("daemon_socket_path")
    @classmethod
    def _socket(cls, v: str) -> str:
        return v or DEFAULT_SOCKET


class DHCPNetConf(CNIModel):
    name: str = ""
    ipam: DHCPIPAM


def option_code(value: str | int, field: str, reserved: tuple[int, ...] = ()) -> int:
    """An option given by name or decimal code -> code (1..254, not one the client manages)."""
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        code = int(value)
    else:
        code = OPTION_NAMES.get(str(value).strip().lower(), 0)
        if not code:
            raise config_error(
                field, f"unknown DHCP option {value!r} (names: {', '.join(OPTION_NAMES)}, or a code)"
            )
    if not 1 <= code <= 254 or code in reserved:
        raise config_error(field, f"DHCP option code {code} cannot be used here")
    return code


def client_id(container_id: str, network: str, ifname: str) -> str:
    """`<containerID>/<network>/<ifname>`, at most 254 bytes (the reference's client identifier)."""
    return f"{container_id}/{network}/{ifname}".encode()[:MAX_CLIENT_ID].decode("utf-8", "ignore")


def session_options(args: CmdArgs, ipam: DHCPIPAM) -> dict[str, Any]:
    """The JSON-ready DHCP options of this attachment, sent to the daemon with ADD."""
    skip_default = any(r.skip_default for r in ipam.request)
    requested: list[int] = [] if skip_default else list(DEFAULT_REQUEST)
    for i, req in enumerate(ipam.request):
        if req.option in ("", None):
            continue
        code = option_code(req.option, f"ipam.request[{i}].option")
        if code not in requested:
            requested.append(code)
    cni_args = args.cni_args
    provide: dict[str, str] = {}
    cid = client_id(args.container_id, args.network_name, args.ifname).encode()
    for i, prov in enumerate(ipam.provide):
        field = f"ipam.provide[{i}]"
        code = option_code(prov.option, f"{field}.option", reserved=(50, 51, 53, 54, 55, 58, 59))
        if prov.from_arg:
            if prov.from_arg not in cni_args:
                continue  # the runtime did not pass it: nothing to provide
            raw = cni_args[prov.from_arg]
        elif prov.value is not None:
            raw = prov.value
        else:
            raise config_error(field, "needs value or fromArg")
        data = raw.encode()
        if len(data) > 255:
            raise config_error(f"{field}.value", "longer than 255 bytes")
        if code == CLIENT_ID:
            cid = data
            continue
        provide[str(code)] = data.hex()
    return {
        "client_id": cid.hex(),
        "requested": requested,
        "provide": provide,
        "broadcast": ipam.broadcast,
        "timeout": ipam.timeout,
    }


def absolute_netns(netns: str) -> str:
    return os.path.abspath(netns) if netns else ""
