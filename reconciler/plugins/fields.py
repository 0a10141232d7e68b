"""Config field types shared by the veth-based main plugins (validated once, named in errors)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def _mtu(v: int) -> int:
    if v and not 68 <= v <= 65535:
        raise ValueError(f"invalid MTU {v} (must be 0 or between 68 and 65535)")
    return v


def _masq_backend(v: str | None) -> str | None:
    if v not in (None, "", "iptables", "nftables"):
        raise ValueError(f"unknown ipMasqBackend {v!r} (iptables or nftables)")
    return v or None


Mtu = Annotated[int, AfterValidator(_mtu)]
MasqBackend = Annotated["str | None", AfterValidator(_masq_backend)]
