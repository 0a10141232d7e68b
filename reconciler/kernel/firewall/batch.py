"""Many operations' firewall writes in one commit per table: both backends' `batched_writes` at once.

For a run of ADDs of distinct attachments whose result is verified afterwards (the reconciler's
workers): nftables writes are queued and applied as one transaction per namespace, legacy
iptables tables stay open (autocommit off) and are committed once each. See
`nftables.batched_writes` and `iptables.batched_writes` for what operations may rely on inside.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from reconciler.kernel.firewall import iptables, nftables


@contextlib.contextmanager
def batched_writes() -> Iterator[list[str]]:
    """Yield a list that, after the block, holds every write that could not be applied."""
    errors: list[str] = []
    with nftables.batched_writes() as nft_batch, iptables.batched_writes() as xt_batch:
        yield errors
    errors.extend(nft_batch.errors + xt_batch.errors)  # both flushed on leaving the block
