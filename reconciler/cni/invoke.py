"""Invoke a CNI plugin: in-process when the type is ours, exec'd from CNI_PATH otherwise.

Both paths take the same `CmdArgs`, go through the same version checks and
return the same JSON, so a chain mixing our plugins and third-party binaries
behaves as libcni would.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from typing import Any

from reconciler.cni import registry
from reconciler.cni.args import CmdArgs
from reconciler.cni.types import Result
from reconciler.cni.version import parse_result
from reconciler.errors import INTERNAL, CNIError

EXEC_RETRIES = 6  # libcni retries "text file busy" this many times, a second apart


def find_in_path(plugin_type: str, cni_path: str | list[str]) -> str:
    """First regular executable file named `plugin_type` in the CNI_PATH directories."""
    if not plugin_type or os.sep in plugin_type:
        raise CNIError(INTERNAL, f"invalid plugin type {plugin_type!r}")
    dirs = cni_path.split(os.pathsep) if isinstance(cni_path, str) else list(cni_path)
    dirs = [d for d in dirs if d]
    for directory in dirs:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate):
            return candidate
    raise CNIError(INTERNAL, f"failed to find plugin {plugin_type!r} in path {dirs}")


def plugin_env(args: CmdArgs) -> dict[str, str]:
    """The environment libcni gives a plugin: ours, plus the CNI_* variables of this call."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(
        CNI_COMMAND=args.command,
        CNI_CONTAINERID=args.container_id,
        CNI_NETNS=args.netns,
        CNI_IFNAME=args.ifname,
        CNI_ARGS=args.args,
        CNI_PATH=args.path,
    )
    if args.host_netns:
        env["RECONCILER_HOST_NETNS"] = args.host_netns
    return env


def exec_plugin(binary: str, args: CmdArgs) -> dict[str, Any] | None:
    """Exec `binary` with the CNI protocol; its stderr passes through to ours."""
    for attempt in range(EXEC_RETRIES):
        try:
            import subprocess  # here, not at the top: a cold in-process plugin start never needs it (~5 ms)

            proc = subprocess.run([binary], input=args.stdin, env=plugin_env(args), capture_output=True)
            break
        except OSError as exc:
            if exc.errno == errno.ETXTBSY and attempt < EXEC_RETRIES - 1:
                time.sleep(1)
                continue
            raise CNIError(INTERNAL, f"failed to exec plugin {binary}", str(exc)) from exc
    if proc.stderr:
        sys.stderr.write(proc.stderr.decode(errors="replace"))
    out = proc.stdout.strip()
    if proc.returncode != 0:
        try:
            data = json.loads(out)
        except ValueError:
            data = None
        if isinstance(data, dict) and "code" in data:
            raise CNIError.from_dict(data)
        text = (proc.stderr or out).decode(errors="replace").strip()
        raise CNIError(INTERNAL, f"netplugin failed: {text!r}")
    if not out:
        return None
    try:
        data = json.loads(out)
    except ValueError as exc:
        raise CNIError(
            INTERNAL, f"netplugin {binary} printed invalid JSON", out.decode(errors="replace")
        ) from exc
    return data if isinstance(data, dict) else None


def call_in_process(plugin_type: str, args: CmdArgs) -> dict[str, Any] | None:
    from reconciler.cni.skel import dispatch, load_module

    try:
        return dispatch(load_module(plugin_type), args)
    except CNIError:
        raise
    except Exception as exc:
        raise CNIError(INTERNAL, f"{type(exc).__name__}: {exc}") from exc


def run_plugin(plugin_type: str, args: CmdArgs, exec_mode: bool = False) -> dict[str, Any] | None:
    """Run one verb of one plugin; returns its stdout JSON (or None)."""
    if not exec_mode and registry.module_for(plugin_type):
        return call_in_process(plugin_type, args)
    return exec_plugin(find_in_path(plugin_type, args.path), args)


def delegate(verb: str, plugin_type: str, args: CmdArgs) -> Result | None:
    """Run a delegated plugin (IPAM) with the caller's stdin and environment."""
    if not plugin_type:
        raise CNIError(INTERNAL, "delegated plugin type is empty")
    sub = CmdArgs(
        command=verb,
        container_id=args.container_id,
        netns=args.netns,
        ifname=args.ifname,
        args=args.args,
        path=args.path,
        stdin=args.stdin,
        host_netns=args.host_netns,
        config=args.config,
    )
    exec_mode = os.environ.get("RECONCILER_EXEC_DELEGATES") == "1"
    out = run_plugin(plugin_type, sub, exec_mode=exec_mode)
    if verb != "ADD":
        return None
    if out is None:
        raise CNIError(INTERNAL, f"delegated plugin {plugin_type!r} returned no result")
    return parse_result(out, args.cni_version)
