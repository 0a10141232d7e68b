"""The `reconciler` command: argument parsing, output and exit codes.

Each command group lives in its own module exposing `register(subparsers)`;
handlers return the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "reconciler.cli.cni_cmd",
    "reconciler.cli.plugins_cmd",
    "reconciler.cli.engine_cmd",
    "reconciler.cli.dhcp_cmd",
    "reconciler.cli.serve_cmd",
    "reconciler.cli.ops_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reconciler", description="CNI plugins and a declarative network reconciler")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default), ERROR")
    parser.add_argument("--log-format", choices=("text", "json"), default=None, help="log lines on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from reconciler.logs import setup_logging

    setup_logging(args.log_level, args.log_format)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 1
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
