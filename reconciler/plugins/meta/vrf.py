"""vrf: put the container interface into a VRF inside the container's namespace.

`vrfname` names the VRF (created on first use, up); `table` picks its routing
table (absent or 0: the lowest id from 1 that no other VRF of the namespace
uses; an existing VRF with another table is an error). The interface keeps
its addresses and routes: enslaving cycles it, so its global IPv6 addresses
and non-connected routes are saved and put back, the routes into the VRF's
table. DEL releases the interface and deletes the VRF when no member is left.
"""

from __future__ import annotations

import logging

from pydantic import field_validator

from reconciler.cni.args import CmdArgs
from reconciler.cni.types import NetConf, Result
from reconciler.cni.version import parse_result
from reconciler.errors import INTERNAL, CNIError, config_error

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")
MAX_TABLE = 2**32 - 1


class VrfConf(NetConf):
    vrf_name: str = ""
    table: int = 0

    @field_validator("table")
    @classmethod
    def _table(cls, v: int) -> int:
        if v < 0 or v > MAX_TABLE or v in (253, 254, 255):
            raise ValueError(f"must be a routing table id in 1..{MAX_TABLE} other than 253-255 (0: choose); got {v}")
        return v


def _conf(args: CmdArgs) -> VrfConf:
    conf = args.conf(VrfConf)  # keys fold case-insensitively: the reference's `vrfname` lands here
    name = conf.vrf_name
    if not name:
        raise config_error("vrfname", "configuration is expected to have a valid vrf name")
    if len(name.encode()) > 15 or "/" in name or any(c.isspace() for c in name) or name in (".", ".."):
        raise config_error("vrfname", f"{name!r} is not a valid interface name")
    return conf


def _prev(conf: VrfConf) -> Result:
    if conf.prev_result is None:
        raise config_error("prevResult", "missing prevResult from earlier plugin")
    return parse_result(conf.prev_result, conf.cni_version)


def add(args: CmdArgs) -> Result:
    """Find or create the VRF, then enslave CNI_IFNAME keeping its addresses and routes."""
    from reconciler.kernel import vrf as kvrf
    from reconciler.kernel.netns import KernelError

    conf = _conf(args)
    result = _prev(conf)
    name = conf.vrf_name
    created = False
    try:
        found = kvrf.find(name, args.netns)
        if found is None:
            table = conf.table or kvrf.first_free_table(args.netns)
            found = kvrf.create(name, table, args.netns)
            created = True
        elif conf.table and conf.table != found.table:
            raise config_error("table", f"VRF {name} already exists with a different routing table {found.table}")
        try:
            kvrf.enslave(args.ifname, found, args.netns)
        except KernelError:
            if created:
                kvrf.delete(name, args.netns)
            raise
    except KernelError as exc:
        raise CNIError(INTERNAL, f"vrf: failed to add {args.ifname} to VRF {name}", str(exc)) from exc
    return result


def delete(args: CmdArgs) -> None:
    """Release CNI_IFNAME; delete the VRF once empty. A missing netns, VRF or interface is fine."""
    from reconciler.kernel import netns as nsmod
    from reconciler.kernel import vrf as kvrf
    from reconciler.kernel.netns import KernelError

    conf = _conf(args)
    if not args.netns or not nsmod.exists(args.netns):
        return
    try:
        found = kvrf.find(conf.vrf_name, args.netns)
        if found is None:
            return
        kvrf.release(args.ifname, args.netns)
        if not kvrf.members(found, args.netns):
            kvrf.delete(found.name, args.netns)
    except KernelError as exc:
        raise CNIError(INTERNAL, f"vrf: failed to remove {args.ifname} from VRF {conf.vrf_name}", str(exc)) from exc


def check(args: CmdArgs) -> None:
    """The VRF exists (with the configured table) and CNI_IFNAME is its member."""
    from reconciler.kernel import links
    from reconciler.kernel import vrf as kvrf
    from reconciler.kernel.netns import KernelError

    conf = _conf(args)
    _prev(conf)
    try:
        found = kvrf.find(conf.vrf_name, args.netns)
        link = links.find(args.ifname, args.netns)
    except KernelError as exc:
        raise CNIError(INTERNAL, f"vrf: cannot read {args.netns}", str(exc)) from exc
    if found is None:
        raise CNIError(INTERNAL, f"vrf: VRF {conf.vrf_name} not found")
    if conf.table and found.table != conf.table:
        raise CNIError(INTERNAL, f"vrf: VRF {conf.vrf_name} uses table {found.table}, want {conf.table}")
    if link is None or link.master != found.index:
        raise CNIError(INTERNAL, f"vrf: {args.ifname} is not a member of VRF {conf.vrf_name}")
