"""The warm path: launcher -> daemon gives byte-identical answers, in the caller's namespace."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.cni import wire
from reconciler.cni.registry import implemented
from tests.cnitest import exec_plugin

pytestmark = pytest.mark.skipif("loopback" not in implemented(), reason="loopback plugin not built yet")
CONF = {"cniVersion": "1.0.0", "name": "rcn-warm", "type": "loopback"}


def start_daemon(directory: Path, log_file: Path, **popen) -> tuple[Path, subprocess.Popen]:
    """`reconciler serve` with DEBUG logs into `log_file` (and `popen`'s process options); the caller stops it."""
    sock = directory / "run" / "plugin.sock"
    with log_file.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "reconciler", "--log-level", "DEBUG", "serve", "--socket",
                                 str(sock)], stdout=subprocess.DEVNULL, stderr=err, **popen)
    deadline = time.monotonic() + 60
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, log_file.read_text()
        time.sleep(0.05)
    return sock, proc


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)


@pytest.fixture
def daemon(tmp_path):
    sock, proc = start_daemon(tmp_path, tmp_path / "daemon.log")
    yield sock, proc
    stop(proc)


def run_both(plugin_dir: Path, sock: Path, command: str, config, **kw):
    warm = exec_plugin(plugin_dir / "loopback", command, config,
                       extra_env={"RECONCILER_PLUGIN_SOCKET": str(sock)}, **kw)
    cold = exec_plugin(plugin_dir / "loopback", command, config,
                       extra_env={"RECONCILER_PLUGIN_SOCKET": str(sock), "RECONCILER_NO_WARM": "1"}, **kw)
    return warm, cold


def test_socket_is_owner_only(daemon) -> None:
    sock, _ = daemon
    assert sock.stat().st_mode & 0o777 == 0o600
    assert sock.parent.stat().st_mode & 0o777 == 0o700


def test_identical_results_and_errors(daemon, plugin_dir, netns) -> None:
    sock, _ = daemon
    for command, config, kw in [
        ("ADD", CONF, {"netns": netns, "ifname": "lo"}),
        ("CHECK", dict(CONF, prevResult={"cniVersion": "1.0.0"}), {"netns": netns, "ifname": "lo"}),
        ("DEL", CONF, {"netns": netns, "ifname": "lo"}),
        ("ADD", b"{broken", {"netns": netns}),
        ("ADD", dict(CONF, cniVersion="9.9.9"), {"netns": netns}),
        ("ADD", CONF, {"netns": "/run/netns/rcn-missing"}),
        ("ADD", CONF, {"netns": netns, "container_id": "bad id"}),
    ]:
        warm, cold = run_both(plugin_dir, sock, command, config, **kw)
        assert (warm.code, warm.stdout) == (cold.code, cold.stdout), (command, config)


def test_an_unknown_log_level_counts_as_warning(daemon, plugin_dir, netns) -> None:
    """RECONCILER_LOG_LEVEL=verbose (a name logging does not know): the plugin still answers, warm and
    cold alike, instead of dying on the level before it reads its config."""
    sock, _ = daemon
    runs = [exec_plugin(plugin_dir / "loopback", "ADD", CONF, netns=netns, ifname="lo",
                        extra_env={"RECONCILER_PLUGIN_SOCKET": str(sock), "RECONCILER_LOG_LEVEL": "verbose",
                                   **({"RECONCILER_NO_WARM": "1"} if cold else {})})
            for cold in (False, True)]
    assert all(run.code == 0 for run in runs), [run.stderr for run in runs]
    assert runs[0].stdout == runs[1].stdout and runs[0].json["interfaces"][0]["name"] == "lo"


def test_daemon_works_in_the_callers_namespace(daemon, plugin_dir, make_netns) -> None:
    """A caller in another netns gets its own namespace's view: loopback ADD with a relative CNI_NETNS
    is resolved by the daemon in the caller's namespace (here: lo of the caller's netns is brought up)."""
    sock, _ = daemon
    host, _ = make_netns("rcn-h-")
    subprocess.run(["ip", "-n", host, "link", "set", "lo", "down"], check=True)
    res = exec_plugin(plugin_dir / "loopback", "ADD", CONF, netns="/proc/self/ns/net", ifname="lo",
                      netns_exec=host, extra_env={"RECONCILER_PLUGIN_SOCKET": str(sock), "CNI_NETNS_OVERRIDE": "1"})
    assert res.code == 0, res.stdout + res.stderr
    state = subprocess.run(["ip", "-n", host, "-o", "link", "show", "lo"], capture_output=True, text=True).stdout
    assert "UP" in state


def test_a_caller_that_sees_other_files_gets_a_cold_run(plugin_dir, make_netns, tmp_path) -> None:
    """A caller whose CNI_NETNS is mounted only in its own mount namespace (as a runtime in a container
    sees its own files): the daemon cannot see that file, so it hangs up and the launcher runs the
    plugin cold, in the caller's view, exactly as with no daemon. Callers in a mount namespace that
    shares our files are still served: a plain copy of ours, and what `ip netns exec` makes (another
    sysfs on /sys). The daemon's debug log says which."""
    name, path = make_netns()
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "down"], check=True)
    log_file = tmp_path / "daemon.log"
    sock, proc = start_daemon(tmp_path, log_file)
    try:
        view = tmp_path / "view"
        view.mkdir()
        private = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f"mount -t tmpfs rcn-view {view} && touch {view}/ns && mount --bind {path} {view}/ns"
                   ' && exec "$0"']
        shared = ["unshare", "--mount", "--propagation", "slave"]
        env = {"RECONCILER_PLUGIN_SOCKET": str(sock)}
        mine = exec_plugin(plugin_dir / "loopback", "ADD", CONF, netns=f"{view}/ns", ifname="lo", wrap=private,
                           extra_env=env)
        cold = exec_plugin(plugin_dir / "loopback", "ADD", CONF, netns=f"{view}/ns", ifname="lo", wrap=private,
                           extra_env={**env, "RECONCILER_NO_WARM": "1"})
        ours = exec_plugin(plugin_dir / "loopback", "ADD", CONF, netns=path, ifname="lo", wrap=shared, extra_env=env)
        via_ip = exec_plugin(plugin_dir / "loopback", "ADD", CONF, netns=path, ifname="lo", netns_exec=name,
                             extra_env=env)  # ip netns exec: another mount namespace, another /sys
    finally:
        stop(proc)
    assert mine.code == 0, mine.stdout + mine.stderr
    assert (mine.code, mine.stdout) == (cold.code, cold.stdout)
    assert "UP" in subprocess.run(["ip", "-n", name, "-o", "link", "show", "lo"], capture_output=True,
                                  text=True).stdout
    assert ours.code == 0 and ours.stdout == mine.stdout.replace(f"{view}/ns", path), ours.stdout
    assert via_ip.code == 0 and via_ip.stdout == ours.stdout, via_ip.stdout + via_ip.stderr
    log = log_file.read_text()
    assert log.count("sees other files") == 1, log
    assert log.count("serving ADD loopback") == 2, log


@pytest.mark.parametrize("kind", ["native", "python"])
def test_a_request_runs_with_the_callers_umask_and_directory(kind, plugin_dir, python_plugin_dir, netns,
                                                             tmp_path) -> None:
    """host-local with a relative dataDir, called from a directory under umask 022, through a daemon
    that runs elsewhere under umask 077: the store lands in the caller's directory with the modes
    umask 022 gives (its missing parent 0755), as in a cold run, and nothing lands in the daemon's."""
    directory = plugin_dir if kind == "native" else python_plugin_dir
    daemon_cwd = tmp_path / "daemon-cwd"
    daemon_cwd.mkdir()
    sock, proc = start_daemon(tmp_path, tmp_path / "daemon.log", cwd=daemon_cwd,
                              preexec_fn=lambda: os.umask(0o077))
    conf = {"cniVersion": "1.0.0", "name": "rcn-cwd", "type": "bridge",
            "ipam": {"type": "host-local", "subnet": "10.79.0.0/24", "dataDir": "store/cni"}}
    runs = {}
    try:
        for mode in ("warm", "cold"):
            caller_dir = tmp_path / f"caller-{mode}"
            caller_dir.mkdir()
            env = {"RECONCILER_PLUGIN_SOCKET": str(sock)} | ({"RECONCILER_NO_WARM": "1"} if mode == "cold" else {})
            runs[mode] = exec_plugin(directory / "host-local", "ADD", conf, netns=netns, container_id=f"cwd-{mode}",
                                     wrap=["sh", "-c", f'cd {caller_dir} && umask 022 && exec "$0"'], extra_env=env)
    finally:
        stop(proc)
    assert runs["warm"].code == 0 and runs["warm"].stdout == runs["cold"].stdout, runs["warm"].stdout
    for mode in ("warm", "cold"):
        store = tmp_path / f"caller-{mode}" / "store"
        assert (store / "cni" / "rcn-cwd" / "10.79.0.2").read_text().startswith(f"cwd-{mode}"), mode
        # the parent makedirs creates is 0777 less the umask; the store's own directories are 0700
        modes = [oct(d.stat().st_mode & 0o777) for d in (store, store / "cni", store / "cni" / "rcn-cwd")]
        assert modes == ["0o755", "0o700", "0o700"], (mode, modes)
    assert list(daemon_cwd.iterdir()) == []
    assert "serving ADD host-local" in (tmp_path / "daemon.log").read_text()


def test_a_caller_with_its_own_mounts_gets_a_cold_run(plugin_dir, netns, tmp_path) -> None:
    """A caller with a private tmpfs where host-local's store lives (as under systemd's PrivateTmp=):
    the daemon sees other mounts, hangs up, and the launcher allocates in the caller's own store, as a
    cold run does; nothing lands in the daemon's view of that directory."""
    private = tmp_path / "private"
    private.mkdir()
    conf = {"cniVersion": "1.0.0", "name": "rcn-priv", "type": "bridge",
            "ipam": {"type": "host-local", "subnet": "10.80.0.0/24", "dataDir": str(private / "store")}}
    wrap = ["unshare", "--mount", "--propagation", "slave", "sh", "-c",
            f'mount -t tmpfs rcn-private {private} && exec "$0"']
    log_file = tmp_path / "daemon.log"
    sock, proc = start_daemon(tmp_path, log_file)
    try:
        env = {"RECONCILER_PLUGIN_SOCKET": str(sock)}
        mine = exec_plugin(plugin_dir / "host-local", "ADD", conf, netns=netns, container_id="priv1", wrap=wrap,
                           extra_env=env)
        cold = exec_plugin(plugin_dir / "host-local", "ADD", conf, netns=netns, container_id="priv1", wrap=wrap,
                           extra_env={**env, "RECONCILER_NO_WARM": "1"})
    finally:
        stop(proc)
    assert mine.code == 0 and (mine.code, mine.stdout) == (cold.code, cold.stdout), mine.stdout + mine.stderr
    assert list(private.iterdir()) == []  # the stores were in the callers' own tmpfs, gone with them
    assert log_file.read_text().count("sees other files") == 1


def test_a_caller_with_its_own_sysfs_is_served_with_it(plugin_dir, make_netns, tmp_path) -> None:
    """`ip netns exec` mounts its target namespace's sysfs on /sys. host-device's `kernelpath` lists
    the devices there: through the daemon it must find the caller's namespace's veth, as a cold run
    does (the daemon's own /sys lists its own namespace's devices). The request is served, and DEL
    hands the device back both times."""
    host, _ = make_netns("rcn-h-")
    other, _ = make_netns("rcn-o-")
    _, container = make_netns("rcn-c-")
    subprocess.run(["ip", "-n", host, "link", "add", "rcnsys0", "type", "veth", "peer", "name", "rcnsys1",
                    "netns", other], check=True)
    conf = {"cniVersion": "1.0.0", "name": "rcn-sysfs", "type": "host-device", "kernelpath": "/sys/devices/virtual"}
    log_file = tmp_path / "daemon.log"
    sock, proc = start_daemon(tmp_path, log_file)
    runs = {}
    try:
        for mode in ("warm", "cold"):
            env = {"RECONCILER_PLUGIN_SOCKET": str(sock)} | ({"RECONCILER_NO_WARM": "1"} if mode == "cold" else {})
            runs[mode] = exec_plugin(plugin_dir / "host-device", "ADD", conf, netns=container, netns_exec=host,
                                     extra_env=env)
            assert runs[mode].code == 0, (mode, runs[mode].stdout + runs[mode].stderr)
            gone = exec_plugin(plugin_dir / "host-device", "DEL", conf, netns=container, netns_exec=host,
                               extra_env=env)
            assert gone.code == 0, (mode, gone.stdout + gone.stderr)
            back = subprocess.run(["ip", "-n", host, "-o", "link", "show", "rcnsys0"], capture_output=True, text=True)
            assert back.returncode == 0, (mode, back.stderr)
    finally:
        stop(proc)
    assert runs["warm"].stdout == runs["cold"].stdout
    assert runs["warm"].json["interfaces"][0]["name"] == "eth0"
    log = log_file.read_text()
    assert "sees other files" not in log and log.count("serving ADD host-device") == 1, log


def test_a_relative_cni_netns_is_found_from_the_callers_directory(plugin_dir, make_netns, tmp_path) -> None:
    """CNI_NETNS=./ns, a namespace file in the caller's directory: the daemon serves it (the request runs
    in that directory) and brings up lo in that namespace, as a cold run does."""
    name, path = make_netns()
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "down"], check=True)
    caller_dir = tmp_path / "caller"
    caller_dir.mkdir()
    (caller_dir / "ns").touch()
    subprocess.run(["mount", "--bind", path, str(caller_dir / "ns")], check=True)
    log_file = tmp_path / "daemon.log"
    sock, proc = start_daemon(tmp_path, log_file)
    try:
        res = exec_plugin(plugin_dir / "loopback", "ADD", CONF, netns="./ns", ifname="lo",
                          wrap=["sh", "-c", f'cd {caller_dir} && exec "$0"'],
                          extra_env={"RECONCILER_PLUGIN_SOCKET": str(sock)})
    finally:
        stop(proc)
        subprocess.run(["umount", str(caller_dir / "ns")], check=False)
    assert res.code == 0, res.stdout + res.stderr
    assert "UP" in subprocess.run(["ip", "-n", name, "-o", "link", "show", "lo"], capture_output=True,
                                  text=True).stdout
    assert "serving ADD loopback" in log_file.read_text()


BAD_INPUTS = [  # (verb, config): each is refused; what differs between them is who refuses it
    ("ADD", b"{broken"),
    ("ADD", {"cniVersion": "9.9.9", "name": "rcn-bad"}),
    ("ADD", {"cniVersion": "0.1.0", "name": "rcn-bad", "prevResult": {"cniVersion": "0.1.0"}}),
    ("ADD", {"cniVersion": "1.0.0", "name": "rcn-bad", "mtu": "not-a-number", "ipam": 5, "master": 7,
             "bridge": ["x"], "addresses": "y", "capabilities": 3, "prevResult": "z"}),
    ("CHECK", {"cniVersion": "1.0.0", "name": "rcn-bad"}),
]


def test_every_plugin_refuses_bad_input_identically_warm_and_cold(daemon, plugin_dir, make_netns) -> None:
    """For every plugin type, the same refused inputs through the daemon and cold give byte-identical
    exit codes and stdout (run in a throwaway host namespace, so nothing a plugin might touch
    before refusing is the real host's)."""
    sock, _ = daemon
    host, _ = make_netns("rcn-h-")
    _, container = make_netns("rcn-c-")
    compared = 0
    for ptype in implemented():
        for verb, config in BAD_INPUTS:
            if isinstance(config, dict):
                config = dict(config, type=ptype)
            warm, cold = run_both(plugin_dir, sock, verb, config, netns=container, netns_exec=host,
                                  container_id="bad1")
            assert (warm.code, warm.stdout) == (cold.code, cold.stdout), (ptype, verb, config, warm, cold)
            if verb == "ADD":
                assert warm.code != 0 and '"code"' in warm.stdout, (ptype, verb, config, warm)
            compared += 1
    assert compared == len(implemented()) * len(BAD_INPUTS)


def test_del_works_with_daemon_down(plugin_dir, netns, tmp_path) -> None:
    res = exec_plugin(plugin_dir / "loopback", "DEL", CONF, netns=netns, ifname="lo",
                      extra_env={"RECONCILER_PLUGIN_SOCKET": str(tmp_path / "nobody-home.sock")})
    assert res.code == 0 and res.stdout == ""


def test_malformed_and_oversized_requests_are_refused(daemon, plugin_dir, netns) -> None:
    sock, proc = daemon
    for payload in [b"GARBAGE!", b"RCN1" + struct.pack("!I", 3), b"RCN1" + struct.pack("!I", 2) + struct.pack("!I", 2**31)]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(sock))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        code, out = wire.read_reply(s)
        s.close()
        assert code == 1 and b'"code": 6' in out
    assert proc.poll() is None  # still serving
    warm, cold = run_both(plugin_dir, sock, "ADD", CONF, netns=netns, ifname="lo")
    assert warm.code == 0 and warm.stdout == cold.stdout


def test_stale_socket_replaced_live_one_refused(tmp_path, daemon) -> None:
    sock, _ = daemon
    second = subprocess.run([sys.executable, "-m", "reconciler", "serve", "--socket", str(sock)],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 1 and "already serving" in second.stdout
    stale = tmp_path / "stale" / "plugin.sock"
    stale.parent.mkdir()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on, as a killed daemon leaves
    from reconciler.cni.server import bind, publish

    fresh = bind(str(stale))
    assert not stale.exists()  # the stale file is gone; the new socket waits under a temporary name
    publish(str(stale))
    assert os.stat(stale).st_mode & 0o777 == 0o600
    fresh.close()


def _bridge_conf(data_dir: Path) -> dict:
    return {"cniVersion": "1.0.0", "name": "rcn-warmbr", "type": "bridge", "bridge": "rcnwbr0", "isGateway": True,
            "ipam": {"type": "host-local", "subnet": "10.77.0.0/24", "dataDir": str(data_dir)}}


def _worker_pids(proc: subprocess.Popen) -> list[int]:
    kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return [int(pid) for pid in kids]


def test_parallel_requests_run_on_several_workers(daemon, plugin_dir, make_netns, tmp_path) -> None:
    """Eight containers ADDed at once through the daemon onto one bridge, with ipMasq rules in one shared
    table: all succeed with distinct addresses, each in its own namespace, each with its rules; DELs at
    once release every address and rule."""
    from concurrent.futures import ThreadPoolExecutor

    sock, proc = daemon
    assert len(_worker_pids(proc)) >= 2
    host, _ = make_netns("rcn-h-")
    containers = [make_netns("rcn-c-") for _ in range(8)]
    conf = dict(_bridge_conf(tmp_path / "ipam"), ipMasq=True)
    env = {"RECONCILER_PLUGIN_SOCKET": str(sock)}

    def rules() -> str:
        dumps = [subprocess.run(["ip", "netns", "exec", host, *cmd], capture_output=True, text=True).stdout
                 for cmd in (["iptables-legacy-save"], ["iptables-nft-save"], ["nft", "list", "ruleset"])]
        return "\n".join(dumps)

    def call(command: str, i: int):
        return exec_plugin(plugin_dir / "bridge", command, conf, netns=containers[i][1], container_id=f"warm{i}",
                           netns_exec=host, extra_env=env)

    with ThreadPoolExecutor(8) as pool:
        adds = list(pool.map(lambda i: call("ADD", i), range(8)))
    assert all(r.code == 0 for r in adds), [r.stdout for r in adds if r.code]
    addresses = [r.json["ips"][0]["address"] for r in adds]
    assert len(set(addresses)) == 8
    for (name, _), address in zip(containers, addresses, strict=True):
        shown = subprocess.run(["ip", "-n", name, "-o", "addr", "show", "eth0"], capture_output=True, text=True).stdout
        assert address in shown
    ports = subprocess.run(["ip", "-n", host, "-o", "link", "show", "master", "rcnwbr0"],
                           capture_output=True, text=True).stdout
    assert len(ports.splitlines()) == 8  # every host-side veth landed in the caller's namespace
    masq = rules()
    assert all(f"warm{i}" in masq for i in range(8)), masq
    with ThreadPoolExecutor(8) as pool:
        dels = list(pool.map(lambda i: call("DEL", i), range(8)))
    assert all(r.code == 0 and r.stdout == "" for r in dels)
    assert not any(f"warm{i}" in rules() for i in range(8))
    leftovers = [p.name for p in (tmp_path / "ipam" / "rcn-warmbr").iterdir() if p.name[0].isdigit()]
    assert leftovers == []


ENV_IPAM = """#!/bin/sh
# an IPAM plugin that reports a variable of its environment (as the runtime's reaches it) in its result,
# and on its stderr
cat >/dev/null
case "$CNI_COMMAND" in
ADD) echo "rcnenvipam: probe $RCN_PROBE" >&2
    printf '{"cniVersion": "1.0.0", "ips": [{"address": "10.78.0.%s/24"}], "dns": {"domain": "%s"}}' \
        "${CNI_IFNAME#eth}" "$RCN_PROBE" ;;
VERSION) printf '{"cniVersion": "1.0.0", "supportedVersions": ["1.0.0"]}' ;;
esac
"""


def env_ipam_dir(tmp_path: Path) -> Path:
    """A CNI_PATH directory holding ENV_IPAM as the `rcnenvipam` plugin."""
    ipam_dir = tmp_path / "ipam-bin"
    ipam_dir.mkdir()
    (ipam_dir / "rcnenvipam").write_text(ENV_IPAM)
    (ipam_dir / "rcnenvipam").chmod(0o755)
    return ipam_dir


@pytest.mark.parametrize("kind", ["native", "python"])
def test_the_callers_whole_environment_reaches_the_plugins_it_execs(kind, daemon, plugin_dir, python_plugin_dir,
                                                                   make_netns, tmp_path) -> None:
    """A third-party IPAM plugin exec'd by our bridge sees the runtime's environment, as libcni passes it
    down, whether the bridge runs in the daemon or cold; a variable that is not UTF-8 arrives unchanged."""
    sock, _ = daemon
    directory = plugin_dir if kind == "native" else python_plugin_dir
    ipam_dir = env_ipam_dir(tmp_path)
    host, _ = make_netns("rcn-h-")
    _, container = make_netns("rcn-c-")
    conf = {"cniVersion": "1.0.0", "name": "rcn-warmenv", "type": "bridge", "bridge": "rcnwenv0",
            "ipam": {"type": "rcnenvipam"}}
    probe = f"probe-{os.getpid()}.example"
    runs = {}
    for n, mode in ((2, "warm"), (3, "cold")):
        env = {"RECONCILER_PLUGIN_SOCKET": str(sock), "RCN_PROBE": probe}
        if mode == "cold":
            env["RECONCILER_NO_WARM"] = "1"
        runs[mode] = exec_plugin(directory / "bridge", "ADD", conf, netns=container, ifname=f"eth{n}",
                                 container_id=f"env{n}", cni_path=f"{directory}:{ipam_dir}", netns_exec=host,
                                 extra_env=env)
    for mode, res in runs.items():
        assert res.code == 0, (mode, res.stdout + res.stderr)
        assert res.json["dns"] == {"domain": probe}, (mode, res.stdout)
    odd = {**{k: v for k, v in os.environ.items() if not k.startswith("CNI_")},
           "CNI_COMMAND": "VERSION", "RECONCILER_PLUGIN_SOCKET": str(sock)}
    env_bytes = {k.encode(): v.encode() for k, v in odd.items()} | {b"RCN_NOT_UTF8": b"\xff\xfe"}
    from reconciler.cni.wire import encode_request, read_reply

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(sock))
    s.sendall(encode_request("loopback", b"{}", env_bytes))
    code, out = read_reply(s)
    s.close()
    assert code == 0 and b"supportedVersions" in out, out  # a variable that is not UTF-8 is no malformed request


@pytest.mark.parametrize("kind", ["native", "python"])
def test_the_callers_stderr_gets_what_a_cold_run_writes(kind, daemon, plugin_dir, python_plugin_dir, make_netns,
                                                        tmp_path) -> None:
    """The launchers pass their stderr with the request: a bridge ADD with ipMasq, logging as the
    caller's RECONCILER_LOG_LEVEL / RECONCILER_LOG_FORMAT say, writes the same log lines (and the
    exec'd IPAM plugin's stderr) to the runtime's stderr through the daemon as cold, and none of them
    to the daemon's own log."""
    sock, _ = daemon
    directory = plugin_dir if kind == "native" else python_plugin_dir
    ipam_dir = env_ipam_dir(tmp_path)
    conf = {"cniVersion": "1.0.0", "name": "rcn-warmlog", "type": "bridge", "bridge": "rcnwlog0", "ipMasq": True,
            "ipam": {"type": "rcnenvipam"}}
    probe = f"stderr-{os.getpid()}.example"
    seen = {}
    for mode in ("warm", "cold"):  # each in a host of its own: the firewall's state shows in the log lines
        host, _ = make_netns("rcn-h-")
        _, container = make_netns("rcn-c-")
        env = {"RECONCILER_PLUGIN_SOCKET": str(sock), "RCN_PROBE": probe, "RECONCILER_LOG_LEVEL": "DEBUG",
               "RECONCILER_LOG_FORMAT": "json"} | ({"RECONCILER_NO_WARM": "1"} if mode == "cold" else {})
        call = {"netns": container, "container_id": "log1", "cni_path": f"{directory}:{ipam_dir}",
                "netns_exec": host, "extra_env": env}
        added = exec_plugin(directory / "bridge", "ADD", conf, **call)
        assert added.code == 0, (mode, added.stdout + added.stderr)
        assert exec_plugin(directory / "bridge", "DEL", conf, **call).code == 0
        lines = added.stderr.splitlines()
        logged = [json.loads(line) for line in lines if line.startswith("{")]
        seen[mode] = ([(r["level"], r["logger"], r["msg"]) for r in logged],
                      [line for line in lines if not line.startswith("{")])
    assert seen["warm"] == seen["cold"]
    records, others = seen["warm"]
    assert others == [f"rcnenvipam: probe {probe}"]
    assert any(level == "debug" and "ipMasq rcn-warmlog/log1" in msg for level, _, msg in records), records
    daemon_log = (tmp_path / "daemon.log").read_text()
    assert "serving ADD bridge" in daemon_log and probe not in daemon_log and "rcn-warmlog/log1" not in daemon_log


@pytest.mark.parametrize("kind", ["native", "python"])
def test_a_caller_with_stderr_closed_is_served(kind, daemon, plugin_dir, python_plugin_dir, netns,
                                               tmp_path) -> None:
    """A runtime that closed its stderr: the launcher sends no descriptor (and not the socket, which
    took descriptor 2), the daemon serves it, and the answer is a cold run's."""
    sock, _ = daemon
    directory = plugin_dir if kind == "native" else python_plugin_dir
    wrap = ["sh", "-c", 'exec "$0" 2>&-']
    env = {"RECONCILER_PLUGIN_SOCKET": str(sock), "RECONCILER_LOG_LEVEL": "DEBUG"}
    warm = exec_plugin(directory / "loopback", "ADD", CONF, netns=netns, ifname="lo", wrap=wrap, extra_env=env)
    cold = exec_plugin(directory / "loopback", "ADD", CONF, netns=netns, ifname="lo", wrap=wrap,
                       extra_env={**env, "RECONCILER_NO_WARM": "1"})
    assert warm.code == 0 and (warm.code, warm.stdout) == (cold.code, cold.stdout), warm.stdout
    assert (tmp_path / "daemon.log").read_text().count("serving ADD loopback") == 1


def test_callers_in_different_namespaces_each_get_their_own(daemon, plugin_dir, make_netns, tmp_path) -> None:
    """A worker never serves one namespace with what it keeps for another: the same bridge ADD from two
    'hosts' builds a bridge in each, and nothing in the daemon's own namespace."""
    sock, _ = daemon
    conf = _bridge_conf(tmp_path / "ipam")
    for i in range(2):
        host, _ = make_netns("rcn-h-")
        _, container = make_netns("rcn-c-")
        res = exec_plugin(plugin_dir / "bridge", "ADD", conf, netns=container, container_id=f"ns{i}",
                          netns_exec=host, extra_env={"RECONCILER_PLUGIN_SOCKET": str(sock)})
        assert res.code == 0, res.stdout + res.stderr
        shown = subprocess.run(["ip", "-n", host, "-o", "link", "show", "rcnwbr0"], capture_output=True, text=True)
        assert shown.returncode == 0, f"bridge missing in caller namespace {host}"
    mine = subprocess.run(["ip", "-o", "link", "show", "rcnwbr0"], capture_output=True, text=True)
    assert mine.returncode != 0


def test_a_dead_worker_is_replaced(daemon, plugin_dir, netns) -> None:
    sock, proc = daemon
    before = _worker_pids(proc)
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = _worker_pids(proc)
        if before[0] not in now and len(now) == len(before):
            break
        time.sleep(0.1)
    assert before[0] not in now and len(now) == len(before)
    warm, cold = run_both(plugin_dir, sock, "ADD", CONF, netns=netns, ifname="lo")
    assert warm.code == 0 and warm.stdout == cold.stdout


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate missing (systemd)")
def test_socket_activation(plugin_dir, netns, tmp_path) -> None:
    """As reconciler-plugins.socket does it: systemd listens, the first call starts `reconciler serve`,
    which takes the socket (LISTEN_FDS) instead of binding; answers are the cold path's."""
    sock = tmp_path / "run" / "plugin.sock"
    sock.parent.mkdir(mode=0o700)
    activator = subprocess.Popen(["systemd-socket-activate", "-l", str(sock), sys.executable, "-m", "reconciler",
                                  "serve", "--socket", str(sock)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert activator.poll() is None, activator.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        warm, cold = run_both(plugin_dir, sock, "ADD", CONF, netns=netns, ifname="lo")
        assert warm.code == 0 and warm.stdout == cold.stdout, warm.stderr
        # the first connection started the daemon (systemd-socket-activate execs it in place): it has workers
        assert _worker_pids(activator)
    finally:
        activator.send_signal(signal.SIGTERM)
        activator.wait(timeout=20)
    assert sock.exists()  # the path is systemd's: the daemon leaves it alone on exit



@pytest.fixture(scope="module")
def python_plugin_dir(tmp_path_factory) -> Path:
    """The plugins as the Python launcher scripts (what hosts without a C compiler get)."""
    from reconciler.launcher import install

    target = tmp_path_factory.mktemp("cni-bin-py")
    old = os.environ.get("RECONCILER_NATIVE_LAUNCHER")
    os.environ["RECONCILER_NATIVE_LAUNCHER"] = "0"
    try:
        install(target)
    finally:
        if old is None:
            del os.environ["RECONCILER_NATIVE_LAUNCHER"]
        else:
            os.environ["RECONCILER_NATIVE_LAUNCHER"] = old
    return target


def test_both_launchers_are_installed_as_asked(plugin_dir, python_plugin_dir) -> None:
    assert (plugin_dir / "bridge").read_bytes()[:4] == b"\x7fELF"  # this machine has a C compiler
    assert (python_plugin_dir / "bridge").read_text().startswith("#!")


def test_python_launcher_gives_the_same_answers(daemon, python_plugin_dir, netns) -> None:
    sock, _ = daemon
    for command, config, kw in [
        ("ADD", CONF, {"netns": netns, "ifname": "lo"}),
        ("ADD", b"{broken", {"netns": netns}),
        ("DEL", CONF, {"netns": netns, "ifname": "lo"}),
    ]:
        warm, cold = run_both(python_plugin_dir, sock, command, config, **kw)
        assert (warm.code, warm.stdout) == (cold.code, cold.stdout), (command, config)


@pytest.mark.parametrize("kind", ["native", "python"])
@pytest.mark.parametrize("padding", [0, 3 * 1024 * 1024])
def test_a_daemon_that_hangs_up_means_a_cold_run_with_the_same_stdin(kind, padding, plugin_dir, python_plugin_dir,
                                                                      netns, tmp_path) -> None:
    """Something accepts on the socket but never answers: the launcher runs the plugin itself, with the
    stdin it already read, and the answer is the cold path's. With a 3 MiB request the hang-up comes
    while the launcher is still sending (EPIPE, never a SIGPIPE death)."""
    import threading

    directory = plugin_dir if kind == "native" else python_plugin_dir
    path = tmp_path / "mute.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    seen: list[bytes] = []

    def hang_up() -> None:
        for _ in range(1):
            conn, _ = listener.accept()
            seen.append(conn.recv(65536))
            conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    conf = dict(CONF, padding="x" * padding) if padding else CONF
    try:
        res = exec_plugin(directory / "loopback", "ADD", conf, netns=netns, ifname="lo",
                          extra_env={"RECONCILER_PLUGIN_SOCKET": str(path)})
        cold = exec_plugin(directory / "loopback", "ADD", conf, netns=netns, ifname="lo",
                           extra_env={"RECONCILER_NO_WARM": "1"})
    finally:
        thread.join(5)
        listener.close()
    assert seen and seen[0].startswith(b"RCN1")  # the request was sent before the fall-back
    assert res.code == 0 and (res.code, res.stdout) == (cold.code, cold.stdout), res.stdout + res.stderr


@pytest.mark.parametrize("kind", ["native", "python"])
def test_a_request_too_large_for_the_daemon_runs_cold(kind, daemon, plugin_dir, python_plugin_dir, netns) -> None:
    """stdin over the wire's 4 MiB limit: the launcher runs the plugin itself with every byte of it."""
    sock, _ = daemon
    directory = plugin_dir if kind == "native" else python_plugin_dir
    big = dict(CONF, padding="x" * (wire.MAX_REQUEST + 1024))
    warm, cold = run_both(directory, sock, "ADD", big, netns=netns, ifname="lo")
    assert warm.code == 0 and (warm.code, warm.stdout) == (cold.code, cold.stdout), warm.stdout + warm.stderr
