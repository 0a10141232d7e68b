"""bridge's configuration model: every field the reference documents, validated with the field named."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from reconciler.cni.args import CmdArgs
from reconciler.cni.model import CNIModel
from reconciler.cni.types import DNS
from reconciler.errors import INVALID_NETWORK_CONFIG, CNIError
from reconciler.plugins.fields import MasqBackend, Mtu


class VlanTrunk(CNIModel):
    min_id: int | None = Field(default=None, alias="minID")
    max_id: int | None = Field(default=None, alias="maxID")
    id: int | None = None


class BridgeConf(CNIModel):
    bridge: str = "cni0"
    is_gateway: bool = False
    is_default_gateway: bool = False
    force_address: bool = False
    ip_masq: bool = False
    ip_masq_backend: MasqBackend = None
    mtu: Mtu = 0
    hairpin_mode: bool = False
    promisc_mode: bool = False
    vlan: int = 0
    vlan_trunk: list[VlanTrunk] | None = None
    preserve_default_vlan: bool = False
    enabledad: bool = False
    macspoofchk: bool = False
    disable_container_interface: bool = False
    port_isolation: bool = False
    ipam: dict[str, Any] | None = None
    dns: DNS | None = None

    @field_validator("bridge")
    @classmethod
    def _bridge(cls, v: str) -> str:
        v = v or "cni0"
        if len(v.encode()) > 15 or "/" in v or any(c.isspace() for c in v):
            raise ValueError(f"invalid bridge name {v!r}")
        return v

    @field_validator("vlan")
    @classmethod
    def _vlan(cls, v: int) -> int:
        if not 0 <= v <= 4094:
            raise ValueError(f"invalid VLAN ID {v} (must be between 0 and 4094)")
        return v

    @model_validator(mode="after")
    def _combos(self) -> BridgeConf:
        if self.hairpin_mode and self.promisc_mode:
            raise ValueError("cannot set hairpin mode and promiscuous mode at the same time")
        if self.is_default_gateway:
            self.is_gateway = True
        if self.disable_container_interface and self.ipam and self.ipam.get("type"):
            raise ValueError("cannot use IPAM when disableContainerInterface flag is set")
        return self

    def trunk_ranges(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for item in self.vlan_trunk or []:
            if item.id is not None:
                if not 1 <= item.id <= 4094:
                    raise config_error(f"vlanTrunk: invalid VLAN ID {item.id} (must be between 1 and 4094)")
                out.append((item.id, item.id))
            if item.min_id is not None or item.max_id is not None:
                if item.min_id is None or item.max_id is None:
                    raise config_error("vlanTrunk: minID and maxID must be set together")
                if not (1 <= item.min_id <= 4094 and 1 <= item.max_id <= 4094) or item.min_id > item.max_id:
                    raise config_error(f"vlanTrunk: invalid range {item.min_id}-{item.max_id}")
                out.append((item.min_id, item.max_id))
        return out


def config_error(msg: str) -> CNIError:
    return CNIError(INVALID_NETWORK_CONFIG, f"invalid network config: {msg}")


def load(args: CmdArgs) -> BridgeConf:
    conf = args.conf(BridgeConf)
    conf.trunk_ranges()
    return conf
