"""host-device: move an existing host device into the container as CNI_IFNAME, and back on DEL.

The device is chosen by exactly one of `device`, `hwaddr`, `kernelpath`, `pciBusID` (or
`runtimeConfig.deviceID`). It travels through a temporary namespace so that it can be renamed
without colliding with names on either side; its original name is kept in IFLA_IFALIAS, which
DEL uses to restore it. PCI devices bound to a userspace (DPDK) driver are not moved at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from pydantic import field_validator

from reconciler.cni.args import CmdArgs
from reconciler.cni.invoke import delegate
from reconciler.cni.model import CNIModel
from reconciler.cni.types import DNS, Interface, Result
from reconciler.cni.version import ALL_VERSIONS
from reconciler.errors import INTERNAL, INVALID_NETWORK_CONFIG, CNIError
from reconciler.kernel import devices, links
from reconciler.kernel import netns as nsmod
from reconciler.kernel.links import Link
from reconciler.plugins import sandboxlink
from reconciler.plugins.iface import kernel_errors, prev_result, undo_quietly

log = logging.getLogger(__name__)
SUPPORTED_VERSIONS = ALL_VERSIONS


class HostDeviceConf(CNIModel):
    device: str = ""
    hwaddr: str = ""
    kernelpath: str = ""
    pci_bus_id: str = ""
    ipam: dict[str, Any] | None = None
    dns: DNS | None = None

    @field_validator("hwaddr")
    @classmethod
    def _mac(cls, v: str) -> str:
        if v:
            parts = v.split(":")
            if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p)
                                          for p in parts):
                raise ValueError(f"failed to parse MAC address {v!r}")
        return v.lower()

    @field_validator("kernelpath")
    @classmethod
    def _kernelpath(cls, v: str) -> str:
        if v and (not os.path.isabs(v) or not v.startswith("/sys/devices/")):
            raise ValueError(f"kernel device path {v!r} must be absolute and begin with /sys/devices/")
        return v


def _load(args: CmdArgs) -> HostDeviceConf:
    conf = args.conf(HostDeviceConf)  # keys fold case-insensitively: pciBusID lands on pci_bus_id
    device_id = args.runtime_config().get("deviceID")
    if device_id:
        conf.pci_bus_id = str(device_id)
    if not (conf.device or conf.hwaddr or conf.kernelpath or conf.pci_bus_id):
        raise CNIError(INVALID_NETWORK_CONFIG, 'specify either "device", "hwaddr", "kernelpath" or "pciBusID"')
    return conf


def _dpdk(conf: HostDeviceConf) -> bool:
    return bool(conf.pci_bus_id) and devices.is_dpdk(conf.pci_bus_id)


def _find(conf: HostDeviceConf, host: str | None) -> Link:
    """The host device the config selects (in the host namespace)."""
    found: Link | None
    if conf.device:
        found = links.find(conf.device, host)
        what = f"device {conf.device!r}"
    elif conf.hwaddr:
        found = devices.find_by_mac(conf.hwaddr, host)
        what = f"device with MAC {conf.hwaddr}"
    elif conf.kernelpath:
        found = devices.find_by_sysfs(conf.kernelpath, host)
        what = f"network device under {conf.kernelpath}"
    else:
        path = devices.pci_dir(conf.pci_bus_id)
        found = devices.find_by_sysfs(path, host) if path else None
        what = f"network device for PCI address {conf.pci_bus_id}"
    if found is None:
        raise CNIError(INTERNAL, f"failed to find host device: no {what} in the host namespace")
    if found.name == "lo":
        raise CNIError(INVALID_NETWORK_CONFIG, "refusing to move the loopback device")
    return found


def add(args: CmdArgs) -> Result:
    conf = _load(args)
    sandboxlink.require_netns(args)
    host = args.host_netns
    if _dpdk(conf):
        result = Result(interfaces=[Interface(name=args.ifname, sandbox=args.netns)])
        if sandboxlink.ipam_type(args.config):
            with contextlib.ExitStack() as undo:
                ipam = sandboxlink.run_ipam(args, undo)
                result.ips, result.routes = ipam.ips, ipam.routes
                for ipc in result.ips:
                    ipc.interface = 0
                undo.pop_all()
        if conf.dns is not None and not conf.dns.is_empty():
            result.dns = conf.dns
        result.cni_version = args.cni_version
        return result
    with nsmod.session(), contextlib.ExitStack() as undo, kernel_errors("host-device"):
        dev = _find(conf, host)
        sandboxlink.ensure_ifname_free(args)
        try:
            link = devices.move_renamed(dev.name, host, args.netns, args.ifname, alias=dev.name)
        except nsmod.KernelError as exc:
            raise CNIError(INTERNAL, f"failed to move link {dev.name!r} into the container: {exc}") from exc
        undo.callback(undo_quietly(devices.move_renamed, args.ifname, args.netns, host, dev.name, dev.alias))
        result = Result()
        if sandboxlink.ipam_type(args.config):
            result = sandboxlink.run_ipam(args, undo)
        result = sandboxlink.configure(args, result, link, notify=False, dns=conf.dns)
        undo.pop_all()
    return result


def _restore_fallen_back(conf: HostDeviceConf, args: CmdArgs, prev: Result | None) -> None:
    """After the container netns was deleted a physical device returns to the host still named
    CNI_IFNAME: give it back its original name (kept in its alias)."""
    host = args.host_netns
    stray = links.find(args.ifname, host)
    if stray is None or not stray.alias or links.find(stray.alias, host) is not None:
        return
    macs = {i.mac.lower() for i in (prev.interfaces if prev else []) if i.mac and i.name == args.ifname}
    if stray.alias == conf.device or (conf.hwaddr and stray.mac == conf.hwaddr) or stray.mac in macs:
        links.set_link(stray.name, host, state="down")
        links.set_link(stray.name, host, ifname=stray.alias)
        log.info("restored %s to its host name %s", args.ifname, stray.alias)


def delete(args: CmdArgs) -> None:
    conf = _load(args)
    if sandboxlink.ipam_type(args.config):
        delegate("DEL", sandboxlink.ipam_type(args.config), args)
    if _dpdk(conf):
        return
    prev = prev_result(args, required=False)
    host = args.host_netns
    with nsmod.session(), kernel_errors("host-device"):
        if not args.netns or not nsmod.exists(args.netns):
            _restore_fallen_back(conf, args, prev)
            return
        link = links.find(args.ifname, args.netns)
        if link is None:
            return
        original = link.alias or conf.device
        if not original:
            raise CNIError(INTERNAL, f"{args.ifname!r} has no alias recording its host name; cannot move it back")
        if links.find(original, host) is not None:
            raise CNIError(INTERNAL, f"cannot move {args.ifname!r} back: {original!r} already exists on the host")
        devices.move_renamed(args.ifname, args.netns, host, original, alias="")


def check(args: CmdArgs) -> None:
    conf = _load(args)
    if _dpdk(conf):
        if sandboxlink.ipam_type(args.config):
            delegate("CHECK", sandboxlink.ipam_type(args.config), args)
        return
    sandboxlink.standard_check(args, None, "host-device")


def status(args: CmdArgs) -> None:
    _load(args)
    sandboxlink.forward_status(args)


def gc(args: CmdArgs) -> None:
    _load(args)
    sandboxlink.forward_gc(args)
