"""kernel.sysctl: keys of the process's own namespace go through held descriptors, every other key by path,
and each lands in the namespace it was meant for. Run in a child process whose own namespace is a test one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import os, sys, threading
from reconciler.kernel import netns, sysctl

other = sys.argv[1]
with netns.entered(other):  # the main thread visiting another namespace writes there, and pins nothing
    sysctl.write_many({"net/ipv4/conf/lo/arp_ignore": 2})
sysctl.write_many({"net/ipv4/conf/lo/arp_notify": 1})  # its own namespace: pinned now
st = os.stat("/proc/self/ns/net")
assert sysctl._HOME is not None and sysctl._HOME.identity == (st.st_dev, st.st_ino), "pinned the wrong namespace"
assert set(sysctl._HOME.dirs) == {"ipv4", "ipv6"}, "home descriptors not held"
sysctl.write_many({"net/ipv6/conf/lo/accept_dad": 0}, other)  # the same through the netns argument

def moved_thread():  # a thread moved by setns alone (as a library might do it), not through `entered`
    fd = os.open(other, os.O_RDONLY)
    netns.setns(fd)
    os.close(fd)
    sysctl.write_many({"net/ipv4/conf/lo/arp_announce": 2})

t = threading.Thread(target=moved_thread)
t.start()
t.join()
if os.fork() == 0:  # a forked child pins its own namespace (here the same one) and still writes at home
    sysctl.write_many({"net/ipv4/conf/all/arp_notify": 1})
    os._exit(0 if sysctl._HOME.pid == os.getpid() else 3)
_, status = os.wait()
sys.exit(os.waitstatus_to_exitcode(status))
"""

KEYS = ("net/ipv4/conf/lo/arp_notify", "net/ipv4/conf/lo/arp_ignore", "net/ipv6/conf/lo/accept_dad",
        "net/ipv4/conf/lo/arp_announce", "net/ipv4/conf/all/arp_notify")


def values(ns: str) -> dict[str, str]:
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", *(f"/proc/sys/{k}" for k in KEYS)],
                         capture_output=True, text=True, check=True).stdout.split()
    return dict(zip(KEYS, out, strict=True))


def test_each_key_lands_in_its_namespace(make_netns) -> None:
    (home, _), (other, other_path) = make_netns(), make_netns()
    before_home, before_other = values(home), values(other)
    proc = subprocess.run(["ip", "netns", "exec", home, sys.executable, "-c", CHILD, other_path],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert values(home) == {**before_home, "net/ipv4/conf/lo/arp_notify": "1", "net/ipv4/conf/all/arp_notify": "1"}
    assert values(other) == {**before_other, "net/ipv4/conf/lo/arp_ignore": "2", "net/ipv6/conf/lo/accept_dad": "0",
                             "net/ipv4/conf/lo/arp_announce": "2"}
