"""Network configuration and result models (spec 1.1.0 is the in-memory form)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from pydantic import Field, field_validator

from reconciler import ipparse
from reconciler.cni.model import CNIModel

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


def _bool_from_string(value: Any) -> Any:
    """libcni accepts "true"/"false" strings for its list-level flags."""
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "false"):
            return low == "true"
        raise ValueError(f"{value!r} is not a boolean")
    return value


class DNS(CNIModel):
    nameservers: list[str] | None = None
    domain: str | None = None
    search: list[str] | None = None
    options: list[str] | None = None

    def is_empty(self) -> bool:
        return not (self.nameservers or self.domain or self.search or self.options)


class Route(CNIModel):
    dst: str
    gw: str | None = None
    mtu: int | None = None
    advmss: int | None = None
    priority: int | None = None
    table: int | None = None
    scope: int | None = None

    @field_validator("dst")
    @classmethod
    def _dst(cls, v: str) -> str:
        return ipparse.canonical_network(v)

    @field_validator("gw")
    @classmethod
    def _gw(cls, v: str | None) -> str | None:
        return None if v in (None, "") else ipparse.canonical_address(v)

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipparse.network(self.dst)


class Interface(CNIModel):
    name: str
    mac: str | None = None
    mtu: int | None = None
    sandbox: str | None = None
    socket_path: str | None = None
    pci_id: str | None = Field(default=None, alias="pciID")


class IPConfig(CNIModel):
    address: str
    gateway: str | None = None
    interface: int | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if "/" not in v:
            raise ValueError(f"address {v!r} must be in CIDR notation")
        return ipparse.canonical_interface(v)

    @field_validator("gateway")
    @classmethod
    def _gateway(cls, v: str | None) -> str | None:
        return None if v in (None, "") else ipparse.canonical_address(v)

    @property
    def iface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipparse.interface(self.address)

    @property
    def version(self) -> int:
        return 6 if ":" in self.address else 4  # `address` is validated CIDR text


class Result(CNIModel):
    """A success result in spec 1.1.0 form (the in-memory form of every version)."""

    cni_version: str = "1.1.0"
    interfaces: list[Interface] = Field(default_factory=list)
    ips: list[IPConfig] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    dns: DNS | None = None

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": self.cni_version}
        for key in ("interfaces", "ips", "routes"):
            items = getattr(self, key)
            if items:
                out[key] = [item.dump() for item in items]
        if self.dns is not None and not self.dns.is_empty():
            out["dns"] = self.dns.dump()
        extra = self.model_extra or {}
        for key, value in extra.items():
            out.setdefault(key, value)
        return out


class IPAMConfig(CNIModel):
    """The `ipam` section: only `type` is common; the rest belongs to the IPAM plugin."""

    type: str = ""


class NetConf(CNIModel):
    """One plugin's configuration as seen on stdin."""

    cni_version: str = "0.1.0"
    name: str = ""
    type: str = ""
    capabilities: dict[str, bool] | None = None
    ipam: IPAMConfig | None = None
    dns: DNS | None = None
    runtime_config: dict[str, Any] | None = None
    args: dict[str, Any] | None = None
    prev_result: dict[str, Any] | None = None

    @field_validator("cni_version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        return "0.1.0" if v in (None, "") else v


class NetConfList(CNIModel):
    """A network configuration list (`.conflist`)."""

    cni_version: str = "0.1.0"
    cni_versions: list[str] | None = None
    name: str = ""
    disable_check: bool = False
    disable_gc: bool = Field(default=False, alias="disableGC")
    load_only_inlined_plugins: bool = False
    plugins: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("disable_check", "disable_gc", "load_only_inlined_plugins", mode="before")
    @classmethod
    def _flags(cls, v: Any) -> Any:
        return _bool_from_string(v)

    @field_validator("cni_version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        return "0.1.0" if v in (None, "") else v
