"""`reconciler graph` and `reconciler install-units`: operating the reconciler on a host.

graph: DOT (or svg/png through Graphviz) of what the host has; exit 0, 1 on error.
install-units: plugins into /opt/cni/bin, systemd units into /etc/systemd/system,
a specs directory at /etc/cni-reconciler/specs; idempotent, `--root` stages into a
directory (like DESTDIR) so packaging and tests never touch the real system.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
UNITS_SOURCE = REPO_ROOT / "examples" / "systemd"
DOCS_SOURCE = REPO_ROOT / "docs"
PLACEHOLDER = "/usr/local/bin/reconciler"
UNIT_SUFFIXES = (".service", ".socket", ".timer")
ENV_FILE = "reconciler.env"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("graph", help="draw the host's networks, who owns what, and drift in red")
    p.add_argument("--specs", default=os.environ.get("RECONCILER_SPECS", "./specs"), help="specs directory")
    p.add_argument("--state", default=os.environ.get("RECONCILER_STATE", "./state"), help="state directory")
    p.add_argument("--format", choices=("dot", "svg", "png"), default="dot", help="dot (default), svg or png")
    p.add_argument("--output", "-o", default="-", help="file to write (default: stdout)")
    p.add_argument("--all", dest="everything", action="store_true",
                   help="draw every namespace and host link, not only the reconciler's")
    p.add_argument("--no-check", action="store_true", help="skip CNI CHECK (drift from the kernel snapshot only)")
    p.set_defaults(handler=cmd_graph)

    p = sub.add_parser("install-units", help="install plugins, systemd units and the specs directory")
    p.add_argument("--root", default="/", help="prefix for every path written (default /)")
    p.add_argument("--bin-dir", default="/opt/cni/bin", help="where the plugin executables go")
    p.add_argument("--units-dir", default="/etc/systemd/system", help="where the unit files go")
    p.add_argument("--specs-dir", default="/etc/cni-reconciler/specs", help="the specs directory to create")
    p.add_argument("--source", default=str(UNITS_SOURCE), help="unit templates (default: examples/systemd)")
    p.add_argument("--reconciler", default=None, help="path of the reconciler CLI the units run")
    p.add_argument("--no-plugins", action="store_true", help="do not install the plugin executables")
    p.add_argument("--no-reload", action="store_true", help="do not run `systemctl daemon-reload`")
    p.set_defaults(handler=cmd_install_units)


# ---- graph
def cmd_graph(args: argparse.Namespace) -> int:
    from reconciler.engine.apply import Engine
    from reconciler.engine.graph import draw, render
    from reconciler.errors import ReconcilerError

    try:
        engine = Engine(args.specs, args.state, show_progress=False)
        dot = draw(engine, everything=args.everything, deep=not args.no_check)
        data = render(dot, args.format)
    except (ReconcilerError, RuntimeError, ValueError) as err:
        print(f"reconciler: graph: {err}", file=sys.stderr)
        return 1
    if args.output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        write_atomic(Path(args.output), data, 0o644)
    return 0


# ---- install-units
def reconciler_command(explicit: str | None = None) -> str:
    """The CLI the units should run: --reconciler, the venv's script next to this python, or PATH."""
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "reconciler"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("reconciler")
    return found or f"{sys.executable} -m reconciler"


def render_unit(text: str, command: str) -> str:
    """A unit template with the CLI placeholder replaced by the real command."""
    return text.replace(PLACEHOLDER, command)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    os.replace(tmp, path)


def install_file(path: Path, data: bytes, mode: int = 0o644, replace: bool = True) -> str:
    """Write `path` only when its content differs; returns created | updated | unchanged | kept."""
    try:
        current = path.read_bytes()
    except FileNotFoundError:
        write_atomic(path, data, mode)
        return "created"
    if current == data:
        if (path.stat().st_mode & 0o7777) != mode:
            path.chmod(mode)
        return "unchanged"
    if not replace:
        return "kept"
    write_atomic(path, data, mode)
    return "updated"


def _under(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def install_units(
    root: str | os.PathLike[str] = "/",
    bin_dir: str = "/opt/cni/bin",
    units_dir: str = "/etc/systemd/system",
    specs_dir: str = "/etc/cni-reconciler/specs",
    source: str | os.PathLike[str] = UNITS_SOURCE,
    command: str | None = None,
    plugins: bool = True,
) -> list[tuple[str, str]]:
    """Install everything under `root`; returns (path, what happened) for each item."""
    base = Path(root)
    src = Path(source)
    if not src.is_dir():
        raise FileNotFoundError(f"unit templates not found in {src} (use --source)")
    done: list[tuple[str, str]] = []
    if plugins:
        from reconciler.launcher import install

        target = _under(base, bin_dir)
        before = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()} if target.is_dir() else {}
        for written in install(target):
            name = Path(written).name
            state = "unchanged" if before.get(name) == Path(written).read_bytes() else (
                "updated" if name in before else "created")
            done.append((written, state))
    cli = reconciler_command(command)
    for unit in sorted(p for p in src.iterdir() if p.suffix in UNIT_SUFFIXES):
        text = render_unit(unit.read_text(), cli)
        path = _under(base, units_dir) / unit.name
        done.append((str(path), install_file(path, text.encode())))
    etc = _under(base, specs_dir).parent
    env_src = src / ENV_FILE
    if env_src.is_file():  # the operator's settings: created once, never overwritten
        done.append((str(etc / ENV_FILE), install_file(etc / ENV_FILE, env_src.read_bytes(), 0o644, replace=False)))
    specs = _under(base, specs_dir)
    existed = specs.is_dir()
    specs.mkdir(parents=True, exist_ok=True)
    done.append((str(specs), "unchanged" if existed else "created"))
    for doc in ("operating.md", "gitops.md"):
        if (DOCS_SOURCE / doc).is_file():
            path = _under(base, "/usr/share/doc/cni-reconciler") / doc
            done.append((str(path), install_file(path, (DOCS_SOURCE / doc).read_bytes())))
    return done


def cmd_install_units(args: argparse.Namespace) -> int:
    try:
        done = install_units(args.root, args.bin_dir, args.units_dir, args.specs_dir, args.source,
                             args.reconciler, plugins=not args.no_plugins)
    except OSError as err:
        print(f"reconciler: install-units: {err}", file=sys.stderr)
        return 1
    for path, what in done:
        print(f"{what:<9} {path}")
    changed = any(what in ("created", "updated") for _, what in done)
    systemd_running = Path("/run/systemd/system").is_dir()
    if Path(args.root).resolve() == Path("/") and changed and systemd_running and not args.no_reload:
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    print("Next: systemctl enable --now reconciler-watch.service reconciler-check.timer")
    return 0
