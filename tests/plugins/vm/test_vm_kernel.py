"""The VM job's own check: inside tests/vm/run.sh every kernel feature the kernelvm tests need is there."""

from __future__ import annotations

import os

import pytest
from kernelkinds import kind_unavailable

pytestmark = pytest.mark.kernelvm


@pytest.mark.parametrize("kind", ["dummy", "ipvlan", "vlan", "vrf"])
def test_link_kind_available(kind: str, need_kind) -> None:
    if os.environ.get("RCN_IN_VM"):
        # in the VM a missing kind is a broken job (modules not found), never a skip
        assert kind_unavailable(kind) is None
    else:
        need_kind(kind)
        assert kind_unavailable(kind) is None
