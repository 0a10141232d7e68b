"""`reconciler plugins install DIR` and `reconciler plugins list`."""

from __future__ import annotations

import argparse
import importlib
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plugins", help="install or list the CNI plugin executables")
    psub = p.add_subparsers(dest="plugins_command", required=True)
    inst = psub.add_parser("install", help="write one executable per plugin type into DIR")
    inst.add_argument("dir")
    inst.set_defaults(handler=install)
    lst = psub.add_parser("list", help="implemented types and the spec versions they support")
    lst.add_argument("--output", choices=("text", "json"), default="text")
    lst.set_defaults(handler=list_plugins)


def install(args: argparse.Namespace) -> int:
    from reconciler.launcher import install as do_install

    for path in do_install(args.dir):
        print(path)
    return 0


def firewall_backend() -> str:
    """The firewall backend this host would get, for the listing (if the backend is built)."""
    try:
        select = importlib.import_module("reconciler.kernel.firewall.select")
    except ModuleNotFoundError:
        return "unavailable"
    describe = getattr(select, "describe", None) or getattr(select, "detect", None)
    try:
        return str(describe()) if describe else "unknown"
    except Exception as exc:  # a broken host firewall must not break the listing
        return f"error: {exc}"


def list_plugins(args: argparse.Namespace) -> int:
    from reconciler.cni.registry import PLUGINS, implemented
    from reconciler.cni.skel import load_module, supported_versions

    rows = []
    done = set(implemented())
    for ptype in PLUGINS:
        if ptype in done:
            module = load_module(ptype)
            verbs = [v for v in ("gc", "status") if hasattr(module, v)]
            rows.append({"type": ptype, "versions": list(supported_versions(module)), "extra_verbs": verbs})
        else:
            rows.append({"type": ptype, "versions": [], "extra_verbs": [], "status": "not implemented"})
    backend = firewall_backend()
    if args.output == "json":
        print(json.dumps({"plugins": rows, "firewallBackend": backend}, indent=1))
        return 0
    for row in rows:
        versions = ", ".join(row["versions"]) or "not implemented"
        extra = f"  (+{', '.join(v.upper() for v in row['extra_verbs'])})" if row["extra_verbs"] else ""
        print(f"{row['type']:<12} {versions}{extra}")
    print(f"firewall backend: {backend}")
    return 0
