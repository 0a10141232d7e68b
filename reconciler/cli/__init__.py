"""The `reconciler` command: argument parsing, output and exit codes.

Each command group lives in its own module exposing `register(subparsers)`;
handlers return the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, NoReturn

COMMAND_MODULES = (
    "reconciler.cli.cni_cmd",
    "reconciler.cli.plugins_cmd",
    "reconciler.cli.engine_cmd",
    "reconciler.cli.dhcp_cmd",
    "reconciler.cli.serve_cmd",
    "reconciler.cli.ops_cmd",
)


USAGE_ERROR = 1  # what every command documents for "could not run"; argparse's own 2 means drift or changes


class Parser(argparse.ArgumentParser):
    """The parser of `reconciler` and of each (sub)command: the logging flags are accepted before or
    after a command's name (after wins), and a usage error exits USAGE_ERROR."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # SUPPRESS: a command's parser sets them only when given, keeping what came before its name
        self.add_argument("--log-level", default=argparse.SUPPRESS, help="DEBUG, INFO, WARNING (default), ERROR")
        self.add_argument("--log-format", choices=("text", "json"), default=argparse.SUPPRESS,
                          help="log lines on stderr (text, the default, or json)")

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="reconciler", description="CNI plugins and a declarative network reconciler")
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

    setup_logging(getattr(args, "log_level", None), getattr(args, "log_format", None))
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
