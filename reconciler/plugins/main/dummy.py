"""dummy: a dummy link inside the container (a stable address holder), configured from IPAM."""

from __future__ import annotations

from typing import Any

from reconciler.cni.args import CmdArgs
from reconciler.cni.model import CNIModel
from reconciler.cni.types import DNS, Result
from reconciler.cni.version import ALL_VERSIONS
from reconciler.errors import INVALID_NETWORK_CONFIG, CNIError
from reconciler.kernel import links
from reconciler.kernel.links import Link
from reconciler.plugins import sandboxlink

SUPPORTED_VERSIONS = ALL_VERSIONS


class DummyConf(CNIModel):
    ipam: dict[str, Any] | None = None
    dns: DNS | None = None


def _load(args: CmdArgs) -> DummyConf:
    conf = args.conf(DummyConf)
    if not sandboxlink.ipam_type(args.config):
        raise CNIError(INVALID_NETWORK_CONFIG, "dummy interface requires an IPAM configuration")
    return conf


def add(args: CmdArgs) -> Result:
    conf = _load(args)

    def create(tmp: str) -> Link:
        return links.create_dummy(tmp, netns=args.netns)

    return sandboxlink.standard_add(args, create, dns=conf.dns, what="dummy", notify=False)


def delete(args: CmdArgs) -> None:
    _load(args)
    sandboxlink.standard_del(args, "dummy")


def check(args: CmdArgs) -> None:
    _load(args)
    sandboxlink.standard_check(args, "dummy", "dummy")


def status(args: CmdArgs) -> None:
    _load(args)
    sandboxlink.forward_status(args)


def gc(args: CmdArgs) -> None:
    _load(args)
    sandboxlink.forward_gc(args)
