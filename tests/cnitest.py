"""Helpers to exec a CNI plugin binary (ours or the reference) exactly as a runtime does."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class PluginRun:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None


def exec_plugin(
    binary: str | Path,
    command: str,
    config: dict | bytes | str,
    *,
    netns: str = "",
    ifname: str = "eth0",
    container_id: str = "ctr1",
    cni_path: str | Path = "",
    cni_args: str = "",
    extra_env: dict[str, str] | None = None,
    netns_exec: str | None = None,
    wrap: list[str] | None = None,
    timeout: float = 60,
) -> PluginRun:
    """Run `binary` with the CNI environment; `netns_exec` runs it inside that named netns (the 'host');
    `wrap` is a command line that runs it (the binary is appended to it)."""
    if isinstance(config, dict):
        stdin = json.dumps(config).encode()
    elif isinstance(config, str):
        stdin = config.encode()
    else:
        stdin = config
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(
        CNI_COMMAND=command,
        CNI_CONTAINERID=container_id,
        CNI_NETNS=netns,
        CNI_IFNAME=ifname,
        CNI_PATH=str(cni_path or Path(binary).parent),
        CNI_ARGS=cni_args,
    )
    env.update(extra_env or {})
    cmd = [str(binary)]
    if netns_exec:
        cmd = ["ip", "netns", "exec", netns_exec, *cmd]
    if wrap:
        cmd = [*wrap, *cmd]
    proc = subprocess.run(cmd, input=stdin, env=env, capture_output=True, timeout=timeout)
    return PluginRun(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


REFERENCE_DIR = Path("/usr/lib/cni")


def in_vm() -> bool:
    """Inside the virtme-ng VM job (tests/vm/run.sh)."""
    return bool(os.environ.get("RCN_IN_VM"))


def run_plugin(
    binary: str | Path,
    command: str,
    config: dict,
    *,
    netns: str,
    host_netns: str,
    ifname: str = "eth0",
    container_id: str = "ctr1",
    cni_path: str | Path = "",
    cni_args: str = "",
    extra_env: dict[str, str] | None = None,
    timeout: float = 600,
    in_process: bool | None = None,
) -> PluginRun:
    """Run `binary` for the namespace named `host_netns` (the host stand-in): exec'd inside it, or,
    for our plugins when `in_process` (default: inside the VM job), through skel.run in this process
    with the host-side work aimed there (RECONCILER_HOST_NETNS). That is the code an exec'd plugin
    runs, minus the interpreter's start-up, which takes tens of seconds per exec under the VM job's
    CPU emulation. The reference binaries are always exec'd."""
    cni_path = str(cni_path or Path(binary).parent)
    if (in_vm() if in_process is None else in_process) and not str(binary).startswith(str(REFERENCE_DIR)):
        from reconciler.cni import skel

        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
               "CNI_PATH": cni_path, "CNI_ARGS": cni_args, "RECONCILER_HOST_NETNS": f"/run/netns/{host_netns}"}
        code, out = skel.run(Path(binary).name, env, json.dumps(config).encode())
        return PluginRun(code, out, "")
    return exec_plugin(binary, command, config, netns=netns, ifname=ifname, container_id=container_id,
                       cni_path=cni_path, cni_args=cni_args, extra_env=extra_env, netns_exec=host_netns,
                       timeout=timeout)
