"""Flags of `dhcp daemon`: the reference's single-dash names and GNU-style long names."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys

from reconciler.plugins.ipam.dhcp.config import DEFAULT_SOCKET

log = logging.getLogger(__name__)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """A Go duration ("10s", "1m30s", "500ms") or a plain number of seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}")
    return sum(float(n) * _UNIT[u] for n, u in parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-socketpath",
        "--socketpath",
        "--socket-path",
        dest="socket_path",
        default=DEFAULT_SOCKET,
        help=f"unix socket to listen on (default {DEFAULT_SOCKET}); leases are kept in SOCKET_PATH.d/",
    )
    parser.add_argument(
        "-pidfile", "--pidfile", dest="pidfile", default="", help="write the pid to this absolute path"
    )
    parser.add_argument(
        "-hostprefix",
        "--hostprefix",
        dest="hostprefix",
        default="",
        help="prefix for netns paths (daemon running in a container with the host's / mounted)",
    )
    parser.add_argument(
        "-broadcast",
        "--broadcast",
        dest="broadcast",
        action="store_true",
        default=True,
        help="set the BOOTP broadcast flag (the default; per network: ipam.broadcast)",
    )
    parser.add_argument("--no-broadcast", dest="broadcast", action="store_false")
    parser.add_argument(
        "-timeout",
        "--timeout",
        dest="timeout",
        type=duration,
        default=30.0,
        help="default time to get a lease on ADD (ipam.timeout overrides), e.g. 30s",
    )
    parser.add_argument(
        "-resendmax",
        "--resend-max",
        dest="resend_max",
        type=duration,
        default=16.0,
        help="longest wait between retransmissions, e.g. 16s",
    )


def run(args: argparse.Namespace) -> int:
    from reconciler.plugins.ipam.dhcp.daemon import Daemon
    from reconciler.plugins.ipam.dhcp.server import serve

    if not logging.getLogger().handlers:
        logging.basicConfig(
            stream=sys.stderr,
            level=os.environ.get("RECONCILER_LOG_LEVEL", "INFO").upper(),
            format="%(asctime)s %(levelname)s %(message)s",
        )
    socket_path = args.hostprefix.rstrip("/") + args.socket_path if args.hostprefix else args.socket_path
    if args.pidfile and not os.path.isabs(args.pidfile):
        log.error("dhcp: -pidfile must be an absolute path")
        return 2
    daemon = Daemon(
        socket_path,
        timeout=args.timeout,
        resend_max=args.resend_max,
        broadcast=args.broadcast,
        hostprefix=args.hostprefix,
    )
    import asyncio  # here, not at the top: every `reconciler` command imports this module's add_arguments

    try:
        asyncio.run(serve(daemon, pidfile=args.pidfile or None))
    except RuntimeError as exc:
        log.error("dhcp: %s", exc)
        return 1
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dhcp daemon", description="CNI DHCP lease daemon")
    add_arguments(parser)
    return run(parser.parse_args(argv))
