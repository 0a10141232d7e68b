"""`reconciler serve`: run the warm-path plugin daemon alone."""

from __future__ import annotations

import argparse
import signal


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the installed plugins' warm path on a unix socket")
    p.add_argument("--socket", default=None, help="socket path (default /run/cni-reconciler/plugin.sock)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes serving requests in parallel (default: 2 per CPU, 2 to 8)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from reconciler.cni.server import Server

    server = Server(args.socket or None, workers=args.workers)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop())
    try:
        server.start()
    except RuntimeError as exc:
        print(f"reconciler serve: {exc}")
        return 1
    server.serve_forever()
    return 0
