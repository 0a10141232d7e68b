"""Fixtures for the kernel-feature plugin tests (ipvlan, vlan, dummy, host-device, tap).

Tests marked `kernelvm` need link kinds this host's kernel may lack. `need_kind(kind)`
probes the running kernel by creating one such link in a scratch namespace (which also
triggers module autoloading), and skips with the reason when it cannot; inside the
virtme-ng VM job (tests/vm/run.sh) the full Debian kernel has them all.
"""

from __future__ import annotations

import pytest
from kernelkinds import kind_unavailable


@pytest.fixture
def need_kind():
    """need_kind('ipvlan'): skip this test when the running kernel lacks the link kind."""

    def _need(kind: str) -> None:
        reason = kind_unavailable(kind)
        if reason:
            pytest.skip(reason)

    return _need
