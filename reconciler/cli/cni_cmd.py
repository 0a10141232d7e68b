"""`reconciler cni add|check|del|gc|status NETWORK [NETNS]`: the cnitool equivalent.

Environment as cnitool's: NETCONFPATH (default /etc/cni/net.d), CNI_PATH,
CAP_ARGS (JSON), CNI_ARGS, CNI_IFNAME (default eth0), CNI_CONTAINERID (default
derived from the netns path, as cnitool does).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

VERBS = ("add", "check", "del", "gc", "status")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cni", help="run a network config list against a netns (cnitool equivalent)")
    p.add_argument("verb", choices=VERBS)
    p.add_argument("network", help="network name, looked up in NETCONFPATH")
    p.add_argument("netns", nargs="?", default="", help="network namespace path (add/check/del)")
    p.add_argument("--cache-dir", default=os.environ.get("CNI_CACHE_DIR", "/var/lib/cni"))
    p.add_argument("--exec", dest="exec_mode", action="store_true", help="exec our plugins from CNI_PATH too")
    p.set_defaults(handler=run)


def container_id_for(netns: str) -> str:
    """cnitool's default: 'cnitool-' + the first 10 bytes of sha512(netns path), in hex."""
    return "cnitool-" + hashlib.sha512(netns.encode()).hexdigest()[:20]


def parse_cni_args(raw: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in filter(None, raw.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"invalid CNI_ARGS pair {item!r}")
        pairs.append((key, value))
    return tuple(pairs)


def run(args: argparse.Namespace) -> int:
    from reconciler.cni.chain import Runner, RuntimeConf
    from reconciler.cni.conf import load_network
    from reconciler.errors import CNIError

    try:
        netlist = load_network(os.environ.get("NETCONFPATH", "/etc/cni/net.d"), args.network)
        runner = Runner(os.environ.get("CNI_PATH", ""), args.cache_dir, exec_mode=args.exec_mode)
        if args.verb == "status":
            runner.status(netlist)
            return 0
        if args.verb == "gc":
            from reconciler.cni import cache

            valid = [
                (e.container_id, e.ifname)
                for e in cache.list_entries(args.cache_dir, netlist.name)
                if e.netns and os.path.exists(e.netns)
            ]
            errors = runner.gc(netlist, valid)
            for err in errors:
                print(err.to_json(), file=sys.stderr)
            return 1 if errors else 0
        if not args.netns:
            raise SystemExit(f"cni {args.verb}: NETNS is required")
        netns = os.path.abspath(args.netns)
        caps = json.loads(os.environ["CAP_ARGS"]) if os.environ.get("CAP_ARGS") else {}
        rt = RuntimeConf(
            container_id=os.environ.get("CNI_CONTAINERID") or container_id_for(netns),
            netns=netns,
            ifname=os.environ.get("CNI_IFNAME", "eth0"),
            args=parse_cni_args(os.environ.get("CNI_ARGS", "")),
            capability_args=caps,
        )
        if args.verb == "add":
            from reconciler.cni.version import result_for_version

            result = runner.add(netlist, rt)
            print(json.dumps(result_for_version(result, netlist.cni_version), indent=1))
        elif args.verb == "check":
            runner.check(netlist, rt)
        else:
            runner.delete(netlist, rt)
        return 0
    except CNIError as err:
        print(err.to_json())
        return 1
