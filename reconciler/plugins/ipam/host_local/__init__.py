"""host-local IPAM: addresses from configured ranges, kept in a file-locked on-disk store.

Verbs over `config` (parsing), `allocator` (policy) and `disk` (the store,
byte-compatible with the reference plugin so both can share a directory).
ADD is idempotent per (id, ifname); DEL succeeds when nothing is held and
even when the ranges no longer parse; GC and STATUS follow spec 1.1.0.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from pydantic import ValidationError

from reconciler import ipparse
from reconciler.cni.args import CmdArgs, field_error, validate_container_id, validate_ifname
from reconciler.cni.types import IPConfig, Result, Route
from reconciler.cni.version import ALL_VERSIONS
from reconciler.errors import INTERNAL, INVALID_NETWORK_CONFIG, NOT_AVAILABLE, CNIError, config_error

from . import config as cfgmod
from .allocator import Allocation, Allocator, free_count
from .disk import DiskStore, Owner, Scan
from .resolv import parse_resolv_conf

SUPPORTED_VERSIONS = ALL_VERSIONS
ENTERS_NETNS = False  # CNI_NETNS need only exist: the skel does not check it is a namespace
log = logging.getLogger("reconciler.ipam.host-local")

VALID_ATTACHMENTS = "cni.dev/valid-attachments"
LEGACY_ATTACHMENTS = "cni.dev/attachments"


def _routes(raw: tuple[dict[str, Any], ...]) -> list[Route]:
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(Route.model_validate(item))
        except ValidationError as exc:
            raise field_error(exc, f"ipam.routes[{i}]") from exc
    return out


def add(args: CmdArgs) -> Result:
    """Reserve one address per range set (or return the ones already held)."""
    validate_container_id(args.container_id)
    validate_ifname(args.ifname)
    conf = cfgmod.load(args.config, args.known_args("host-local", "IP"))
    routes = _routes(conf.routes)
    wanted = cfgmod.match_requests(conf.range_sets, conf.requested)
    dns = parse_resolv_conf(conf.resolv_conf) if conf.resolv_conf else None
    owner = Owner(args.container_id.strip(), args.ifname)
    store = DiskStore.open(conf.data_dir, conf.network)
    assert store is not None
    with store:
        store.prepare(owner, len(conf.range_sets))  # the slow part (write + fsync) outside the lock
        result_sets = _allocate(store, conf, owner, wanted)
    ips = [
        IPConfig(address=a.cidr, gateway=str(a.range.gateway) if a.range.gateway else None)
        for a in result_sets
    ]
    return Result(cni_version=conf.cni_version, ips=ips, routes=routes, dns=dns)


def _allocate(
    store: DiskStore, conf: cfgmod.HostLocalConfig, owner: Owner, wanted: list[cfgmod.IPAddr | None]
) -> list[Allocation]:
    """One address per range set under the lock; all or nothing.

    The directory is read before the lock is taken (`DiskStore.snapshot`); under the lock only
    the caller's own reservations are re-read. Any failure on that view is retried on a full
    scan before it is reported.
    """
    hint = store.snapshot()
    with store.locked(hint, remember=True) as scan:
        if hint is not None and not store.confirm(scan, owner):
            scan = store.rescan()
        try:
            return _allocate_sets(store, scan, conf, owner, wanted)
        except CNIError:
            if hint is None or store.current is not hint:
                raise
        return _allocate_sets(store, store.rescan(), conf, owner, wanted)


def _allocate_sets(
    store: DiskStore,
    scan: Scan,
    conf: cfgmod.HostLocalConfig,
    owner: Owner,
    wanted: list[cfgmod.IPAddr | None],
) -> list[Allocation]:
    allocator = Allocator(store, scan)
    done: list[Allocation] = []
    try:
        for index, rs in conf.iter_sets():
            try:
                done.append(allocator.get(index, rs, owner, wanted[index]))
            except CNIError as exc:
                raise CNIError(
                    exc.code, f"failed to allocate for range {index}: {exc.msg}", exc.details
                ) from exc
    except BaseException:
        allocator.release(done)
        raise
    return done


def _store_location(args: CmdArgs) -> tuple[str, str]:
    """(dataDir, network) without requiring the ranges to parse (DEL and GC must not leak)."""
    ipam = cfgmod.get_key(args.config, "ipam")
    if not isinstance(ipam, dict):
        raise CNIError(INVALID_NETWORK_CONFIG, "IPAM config missing 'ipam' key")
    data_dir = cfgmod.get_key(ipam, "dataDir") or os.environ.get(cfgmod.DATA_DIR_ENV)
    return str(data_dir or cfgmod.DEFAULT_DATA_DIR), args.network_name


def delete(args: CmdArgs) -> None:
    """Release every reservation of (id, ifname); id-only legacy files if none matched."""
    data_dir, network = _store_location(args)
    store = DiskStore.open(data_dir, network, create=False)
    if store is None:
        return
    owner = Owner(args.container_id.strip(), args.ifname)
    with store:
        # As ADD: the directory is read before the lock (from this process's previous scan, so a
        # long-lived process reads only what changed); under it, every name to release is re-read.
        hint = store.snapshot()
        with store.locked(hint, remember=True) as scan:
            names = set(scan.held_by(owner.container_id, args.ifname))
            if hint is not None:
                names |= set(_prev_addresses(args.config))  # whatever the scan's view may have missed
                names = {n for n in names if store.holds(n, owner)}
            for name in sorted(names):
                store.release(name)
                scan.forget(name)


def _prev_addresses(config: dict[str, Any]) -> list[str]:
    """The addresses of prevResult's `ips` (empty when there is none)."""
    prev = config.get("prevResult")
    out = []
    if isinstance(prev, dict):
        for item in prev.get("ips") or []:
            address = item.get("address") if isinstance(item, dict) else None
            if isinstance(address, str) and "/" in address:
                with contextlib.suppress(ValueError):
                    out.append(str(ipparse.interface(address).ip))
    return out


def check(args: CmdArgs) -> None:
    """The reservation must exist, and cover every prevResult address inside our ranges."""
    conf = cfgmod.load(args.config, args.cni_args, with_requests=False)
    store = DiskStore.open(conf.data_dir, conf.network, create=False)
    owner = Owner(args.container_id.strip(), args.ifname)
    ours = [ip for ip in _prev_addresses(args.config)
            if any(rs.contains(ipparse.address(ip)) for rs in conf.range_sets)]
    held: list[str] = []
    if store is not None:
        with store:
            # The common case reads only prevResult's reservations: files are created whole by
            # link(2) and never rewritten, so no lock is needed to see that they are ours.
            if ours and all(store.holds(ip, owner) for ip in ours):
                return
            with store.locked() as scan:
                held = scan.held_by(owner.container_id, args.ifname)
    if not held:
        raise CNIError(INTERNAL, f"host-local: Failed to find address added by container {args.container_id}")
    for ip in ours:
        if ip not in held:
            raise CNIError(
                INTERNAL,
                f"host-local: address {ip} in prevResult is not reserved for {args.container_id}/{args.ifname}",
            )


def _valid_attachments(config: dict[str, Any]) -> set[tuple[str, str]]:
    raw = config.get(VALID_ATTACHMENTS)
    if raw is None:
        raw = config.get(LEGACY_ATTACHMENTS)
    if raw is None:  # never read a missing list as "nothing is valid": that would free everything
        raise config_error(VALID_ATTACHMENTS, "missing; GC needs the list of valid attachments")
    if not isinstance(raw, list):
        raise config_error(VALID_ATTACHMENTS, "must be a list of {containerID, ifname}")
    out: set[tuple[str, str]] = set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise config_error(f"{VALID_ATTACHMENTS}[{i}]", "must be an object")
        cid = item.get("containerID", item.get("containerId"))
        ifname = item.get("ifname", item.get("ifName"))
        if not isinstance(cid, str) or not isinstance(ifname, str):
            raise config_error(f"{VALID_ATTACHMENTS}[{i}]", "needs string containerID and ifname")
        out.add((cid.strip(), ifname))
    return out


def gc(args: CmdArgs) -> None:
    """Release every reservation whose (id, ifname) is not a valid attachment."""
    valid = _valid_attachments(args.config)
    valid_ids = {cid for cid, _ in valid}
    data_dir, network = _store_location(args)
    store = DiskStore.open(data_dir, network, create=False)
    if store is None:
        return
    with store, store.locked() as scan:
        for name, owner in sorted(scan.owners.items()):
            keep = (
                (owner.container_id in valid_ids)
                if owner.ifname is None
                else ((owner.container_id, owner.ifname) in valid)
            )
            if not keep:
                log.info("gc: releasing %s held by %s/%s", name, owner.container_id, owner.ifname)
                store.release(name)


def status(args: CmdArgs) -> None:
    """Code 50 unless the store is writable and every range set has a free address."""
    conf = cfgmod.load(args.config, {}, with_requests=False)
    try:
        store = DiskStore.open(conf.data_dir, conf.network)
        assert store is not None
        with store, store.locked() as scan:
            store.probe_writable()
            for index, rs in conf.iter_sets():
                if free_count(rs, scan) <= 0:
                    raise CNIError(NOT_AVAILABLE, f"no IP addresses available in range set {index}: {rs}")
    except CNIError as exc:
        if exc.code == NOT_AVAILABLE:
            raise
        raise CNIError(NOT_AVAILABLE, "allocation store is not writable", exc.msg) from exc
    except OSError as exc:
        raise CNIError(NOT_AVAILABLE, "allocation store is not writable", str(exc)) from exc


__all__ = ["SUPPORTED_VERSIONS", "add", "check", "delete", "gc", "status"]
