"""`reconciler dhcp daemon`: the DHCP IPAM plugin's lease daemon."""

from __future__ import annotations

import argparse
from typing import Any


def _daemon(args: argparse.Namespace) -> int:
    from reconciler.plugins.ipam.dhcp.cli import run

    return run(args)


def register(subparsers: Any) -> None:
    from reconciler.plugins.ipam.dhcp.cli import add_arguments

    dhcp = subparsers.add_parser("dhcp", help="DHCP IPAM lease daemon")
    sub = dhcp.add_subparsers(dest="dhcp_command", metavar="COMMAND")
    daemon = sub.add_parser("daemon", help="run the lease daemon (listens on --socket-path)")
    add_arguments(daemon)
    daemon.set_defaults(handler=_daemon)
