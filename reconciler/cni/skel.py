"""The exec protocol: environment + stdin -> verb -> stdout (the reference's `skel`).

`main()` is what an installed plugin executable runs when it works alone;
`dispatch()` is shared by every path (exec'd, in-process, warm daemon) so
that results and errors are identical whichever way a plugin is reached.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Mapping
from dataclasses import replace
from types import ModuleType
from typing import Any

from reconciler.cni import registry
from reconciler.cni.args import (
    CmdArgs,
    decode_config,
    validate_container_id,
    validate_ifname,
    validate_network_name,
)
from reconciler.cni.version import ALL_VERSIONS, CURRENT, at_least, result_for_version
from reconciler.errors import (
    INCOMPATIBLE_VERSION,
    INTERNAL,
    INVALID_ENVIRONMENT,
    INVALID_NETNS,
    IO_FAILURE,
    CNIError,
)

log = logging.getLogger("reconciler.cni")

VERBS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
# Environment each verb requires (libcni skel also requires CNI_PATH everywhere).
REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
}
VERB_FUNCS = {"ADD": "add", "DEL": "delete", "CHECK": "check", "GC": "gc", "STATUS": "status"}


def load_module(plugin_type: str) -> ModuleType:
    name = registry.module_for(plugin_type)
    if name is None:
        raise CNIError(INTERNAL, f"plugin type {plugin_type!r} is not implemented here")
    return importlib.import_module(name)


def supported_versions(module: ModuleType) -> tuple[str, ...]:
    return tuple(getattr(module, "SUPPORTED_VERSIONS", ALL_VERSIONS))


def version_info(module: ModuleType) -> dict[str, Any]:
    return {"cniVersion": CURRENT, "supportedVersions": list(supported_versions(module))}


def check_version(module: ModuleType, args: CmdArgs) -> None:
    """Config version must be one the plugin supports, and allow the verb."""
    version = args.cni_version
    supported = supported_versions(module)
    if version not in supported:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"config is {json.dumps(version)}, plugin supports {json.dumps(list(supported))}",
        )
    if args.command == "CHECK" and not at_least(version, "0.4.0"):
        raise CNIError(INCOMPATIBLE_VERSION, "config version does not allow CHECK")
    if args.command in ("GC", "STATUS") and not at_least(version, "1.1.0"):
        raise CNIError(INCOMPATIBLE_VERSION, f"config version does not allow {args.command}")


def dispatch(module: ModuleType, args: CmdArgs) -> dict[str, Any] | None:
    """Run one verb of `module`; returns the JSON to print (ADD's result, VERSION's info) or None."""
    if args.command == "VERSION":
        return version_info(module)
    if args.command not in VERB_FUNCS:
        raise CNIError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {args.command}")
    check_version(module, args)
    func = getattr(module, VERB_FUNCS[args.command], None)
    if func is None:
        return None  # GC/STATUS not implemented: success, as the reference skel does
    if args.command in ("ADD", "CHECK") and getattr(module, "ENTERS_NETNS", True):
        check_netns(args.netns, namespace=True)
    result = func(args)
    if args.command == "ADD":
        try:
            if result is None:
                raise CNIError(INTERNAL, f"plugin {getattr(module, '__name__', '?')} returned no result from ADD")
            return result_for_version(result, args.cni_version)
        except CNIError:
            roll_back_add(module, args)
            raise
    return None


def roll_back_add(module: ModuleType, args: CmdArgs) -> None:
    """DEL what an ADD made when its result cannot be returned (a 0.1.0/0.2.0 result needs an IP
    address): the caller gets an error, so nothing of the ADD may stay behind. A DEL that fails is
    logged; the error the caller gets is the ADD's."""
    delete = getattr(module, "delete", None)
    if delete is None:
        return
    try:
        delete(replace(args, command="DEL"))
    except Exception as exc:  # noqa: BLE001 - the ADD's error is the one to report
        log.warning("rolling back the ADD of %s failed: %s", getattr(module, "__name__", "?"), exc)


def args_from_env(env: Mapping[str, str], stdin: bytes) -> CmdArgs:
    """Validate the CNI environment for the verb and decode stdin."""
    command = env.get("CNI_COMMAND", "")
    if command not in VERBS:
        raise CNIError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {command}")
    if command == "VERSION":
        return CmdArgs(command=command)
    missing = [key for key in REQUIRED_ENV[command] if key not in env or (key != "CNI_PATH" and not env[key])]
    if missing:
        raise CNIError(INVALID_ENVIRONMENT, f"required env variables [{','.join(missing)}] missing")
    if command not in ("GC", "STATUS"):
        validate_container_id(env["CNI_CONTAINERID"])
        validate_ifname(env["CNI_IFNAME"])
    config = decode_config(stdin)
    validate_network_name(str(config.get("name") or ""))
    netns = env.get("CNI_NETNS", "")
    if command in ("ADD", "CHECK"):
        check_netns(netns, namespace=False)  # which plugins need a namespace there, dispatch knows
    return CmdArgs(
        command=command,
        container_id=env.get("CNI_CONTAINERID", ""),
        netns=netns,
        ifname=env.get("CNI_IFNAME", ""),
        args=env.get("CNI_ARGS", ""),
        path=env.get("CNI_PATH", ""),
        stdin=stdin,
        config=config,
        host_netns=env.get("RECONCILER_HOST_NETNS") or None,
    )


def check_netns(netns: str, namespace: bool) -> None:
    """CNI_NETNS must exist and, with `namespace`, be a network namespace (code 8 otherwise, as the
    reference's "failed to open netns"): a file that is not on nsfs, such as one left when a
    namespace's mount was lost, would otherwise fail deep inside the plugin with EINVAL. Plugins
    that never enter it (host-local and static, `ENTERS_NETNS = False`) only need it to exist."""
    try:
        dev = os.stat(netns).st_dev
    except FileNotFoundError:
        raise CNIError(INVALID_NETNS, f"failed to open netns {netns!r}: no such file or directory") from None
    except OSError as exc:
        raise CNIError(INVALID_NETNS, f"failed to open netns {netns!r}: {exc.strerror}") from None
    if namespace and dev != os.stat("/proc/self/ns/net").st_dev:  # every namespace file lives on the one nsfs
        raise CNIError(INVALID_NETNS, f"failed to open netns {netns!r}: not a network namespace")


def run(plugin_type: str, env: Mapping[str, str], stdin: bytes) -> tuple[int, str]:
    """The whole exec protocol as a pure function: returns (exit status, stdout text)."""
    try:
        if not env.get("CNI_COMMAND"):
            mod = load_module(plugin_type)
            sys.stderr.write(
                f"CNI {plugin_type} plugin (cni-reconciler)\n"
                f"CNI protocol versions supported: {', '.join(supported_versions(mod))}\n"
            )
            return 0, ""
        args = args_from_env(env, stdin)
        module = load_module(plugin_type)
        out = dispatch(module, args)
        return 0, (json.dumps(out) + "\n") if out is not None else ""
    except CNIError as err:
        return 1, err.to_json() + "\n"
    except Exception as exc:  # an unexpected failure is code 999, never a traceback on stdout
        traceback.print_exc(file=sys.stderr)
        err = CNIError(INTERNAL, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        return 1, err.to_json() + "\n"


def main(plugin_type: str) -> int:
    logging.basicConfig(stream=sys.stderr, level=os.environ.get("RECONCILER_LOG_LEVEL", "WARNING").upper())
    try:
        stdin = b"" if os.environ.get("CNI_COMMAND") == "VERSION" else sys.stdin.buffer.read()
    except OSError as exc:
        sys.stdout.write(CNIError(IO_FAILURE, "error reading from stdin", str(exc)).to_json() + "\n")
        return 1
    code, out = run(plugin_type, os.environ, stdin)
    sys.stdout.write(out)
    sys.stdout.flush()
    return code


if __name__ == "__main__":  # python -m reconciler.cni.skel TYPE
    sys.exit(main(sys.argv[1]))
