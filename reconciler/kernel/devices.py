"""Whole devices: tap creation through /dev/net/tun, moving a device between namespaces
through a temporary namespace (renaming it on the way), and finding a device by MAC,
sysfs kernel path or PCI address.

`links.py` creates netlink-made link kinds; this module covers what netlink alone
cannot do (tun ioctls) and the multi-step moves of host-device.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import uuid
from collections.abc import Iterator

from reconciler.kernel import links, namespaces
from reconciler.kernel import netns as nsmod
from reconciler.kernel.links import Link
from reconciler.kernel.netns import KernelError

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
DPDK_DRIVERS = ("vfio-pci", "uio_pci_generic", "igb_uio")
PCI_DEVICES = "/sys/bus/pci/devices"
AUX_DEVICES = "/sys/bus/auxiliary/devices"


# --- tap --------------------------------------------------------------------------------------------


def _make_tap(name: str, multi_queue: bool, owner: int | None, group: int | None) -> None:
    """In the current namespace: a persistent tap (IFF_TAP|IFF_VNET_HDR [|IFF_MULTI_QUEUE])."""
    flags = IFF_TAP | IFF_VNET_HDR | (IFF_MULTI_QUEUE if multi_queue else 0)
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
        if owner is not None:
            fcntl.ioctl(fd, TUNSETOWNER, owner)
        if group is not None:
            fcntl.ioctl(fd, TUNSETGROUP, group)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


def create_tap(name: str, netns: str | None = None, *, multi_queue: bool = False,
               owner: int | None = None, group: int | None = None) -> Link:
    """Create a persistent tap device `name` inside `netns`; LinkExists if the name is taken."""
    if links.find(name, netns) is not None:
        raise links.LinkExists(name, netns)
    try:
        nsmod.run_in(netns, _make_tap, name, multi_queue, owner, group)
    except KernelError:
        raise
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise links.LinkExists(name, netns) from exc
        raise KernelError(exc.errno or errno.EIO, f"create tap {name!r}: {exc.strerror or exc}") from exc
    return links.get(name, netns)


# --- moving devices between namespaces ---------------------------------------------------------------


@contextlib.contextmanager
def temp_netns() -> Iterator[str]:
    """A scratch network namespace (a device parks there while it is renamed)."""
    name = f"rcn-tmp-{uuid.uuid4().hex[:10]}"
    namespaces.create(name)
    try:
        yield namespaces.path_for(name)
    finally:
        namespaces.delete(name)


def move_renamed(name: str, from_netns: str | None, to_netns: str | None, new_name: str,
                 alias: str | None = None) -> Link:
    """Move `name` from `from_netns` to `to_netns` as `new_name`, via a temporary namespace so that
    neither side's names can collide mid-way; set IFLA_IFALIAS to `alias` when given (None: keep,
    "": clear). On failure the device is put back under its original name where possible.
    """
    original = links.get(name, from_netns)
    with temp_netns() as tmp:
        links.move(name, tmp, netns=from_netns)
        try:
            links.rename(name, new_name, tmp)
            if alias is not None:
                links.set_alias(new_name, alias, tmp)
            links.move(new_name, to_netns, netns=tmp)
        except KernelError:
            _put_back(tmp, name, new_name, original, from_netns)
            raise
    return links.get(new_name, to_netns)


def _put_back(tmp: str, name: str, new_name: str, original: Link, home: str | None) -> None:
    """Best-effort rollback for move_renamed: whatever name the device has in `tmp`, send it home."""
    for current in (new_name, name):
        if links.find(current, tmp) is None:
            continue
        with contextlib.suppress(KernelError):
            if current != name:
                links.rename(current, name, tmp)
                current = name
            links.set_alias(current, original.alias, tmp)
        with contextlib.suppress(KernelError):
            links.move(current, home, netns=tmp)
        return


# --- finding devices ---------------------------------------------------------------------------------


def find_by_mac(mac: str, netns: str | None = None) -> Link | None:
    """The first link whose hardware address is `mac` (case-insensitive)."""
    want = mac.lower()
    return next((lk for lk in links.list_links(netns) if lk.mac == want), None)


def _net_dir_names(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        return []


def names_under(device_dir: str) -> list[str]:
    """Interface names a sysfs device directory exposes (`<dir>/net/*`, also `<dir>/virtio*/net/*`)."""
    names = _net_dir_names(os.path.join(device_dir, "net"))
    if not names:
        for entry in _net_dir_names(device_dir):
            if entry.startswith("virtio"):
                names += _net_dir_names(os.path.join(device_dir, entry, "net"))
    return names


def find_by_sysfs(device_dir: str, netns: str | None = None) -> Link | None:
    """The link (in `netns`) named by one of the device directory's interface names (never `lo`)."""
    by_name = {lk.name: lk for lk in links.list_links(netns) if lk.name != "lo"}
    return next((by_name[n] for n in names_under(device_dir) if n in by_name), None)


def pci_dir(pci_id: str) -> str | None:
    """/sys/bus/pci/devices/<id>, or the auxiliary device directory, when it exists."""
    for base in (PCI_DEVICES, AUX_DEVICES):
        path = os.path.join(base, pci_id)
        if os.path.isdir(path):
            return path
    return None


def pci_driver(pci_id: str) -> str | None:
    """The kernel driver bound to a PCI device (basename of its `driver` link), or None."""
    try:
        return os.path.basename(os.readlink(os.path.join(PCI_DEVICES, pci_id, "driver")))
    except OSError:
        return None


def is_dpdk(pci_id: str) -> bool:
    """True when the PCI device is bound to a userspace (DPDK) driver."""
    return pci_driver(pci_id) in DPDK_DRIVERS
