"""The installed plugin executables' Python side: the launcher and the installer.

`reconciler plugins install DIR` writes one executable per plugin type. With a
C compiler it is the native front (launcher.c, built by `native.py`): it
forwards the call to the warm-path daemon and, when no daemon answers, execs
this module's cold path. Without one it is a Python script run by `python -SE`
(no `site`, no PYTHON* variables: a runtime's environment must not change how a
plugin starts, and PYTHONDONTWRITEBYTECODE would make every start recompile the
package) that calls `launch(TYPE)`. Until it knows it must work alone that
script imports only `posix`, `sys` and `_socket` (no `site`, no `os`, no
`struct`, no `json`: each costs milliseconds of a ~15 ms budget): when the
daemon listens the request is forwarded there and the answer relayed byte for
byte; otherwise the site-packages are enabled and the plugin runs in this
process (cold) through the same `skel.run` the daemon uses.
"""

import posix
import sys

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs ~10 ms on the start-up path
if TYPE_CHECKING:
    import os
    from typing import NoReturn

DEFAULT_SOCKET = "/run/cni-reconciler/plugin.sock"

# The Python side of every installed executable: find the package, then one `launch` call.
PRELUDE = """import sys
sys.path[:0] = {paths!r}
SITE_PACKAGES = {site_packages!r}
from reconciler.launcher import launch
"""
# the Python launcher script (no compiler), one per type
SCRIPT = ("#!{python} -SE\n# CNI plugin {ptype!r} (cni-reconciler), written by `reconciler plugins install`.\n"
          + PRELUDE + "sys.exit(launch({ptype!r}))\n")
# what the native front execs (`python -SE -c COLD_CODE TYPE ...`) when no daemon answers
COLD_CODE = PRELUDE + "sys.exit(launch(sys.argv.pop(1), try_daemon=False))\n"


def finish(code: int) -> "NoReturn":
    """Flush and leave without the interpreter's finalisation (~5 ms; more once pyroute2 is loaded)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        logging = sys.modules.get("logging")
        if logging is not None:
            logging.shutdown()
    finally:
        posix._exit(code)


def _environb() -> dict[bytes, bytes]:
    """The environment as bytes: `os.environb` if someone imported os (it tracks changes), else posix's."""
    os_module = sys.modules.get("os")
    return os_module.environb if os_module is not None else posix.environ  # type: ignore[no-any-return]


def _getenv(name: str, default: str = "") -> str:
    value = _environb().get(name.encode())
    return value.decode(errors="surrogateescape") if value is not None else default


def socket_path() -> str:
    return _getenv("RECONCILER_PLUGIN_SOCKET", DEFAULT_SOCKET)


def try_warm(plugin_type: str, stdin: bytes) -> tuple[int, bytes] | None:
    """Forward to the daemon; None when no daemon answers (the caller then runs cold)."""
    import _socket

    from reconciler.cni import wire

    try:  # before the socket is made: with descriptor 2 closed, the socket would take it
        posix.fstat(2)
        stderr: int | None = 2
    except OSError:
        stderr = None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(socket_path())
        env = _environb()  # all of it: a cold run, and the IPAM plugins it execs, see all of it
        request = wire.encode_request(plugin_type, stdin, env)
        if len(request) > wire.MAX_REQUEST or 2 + 2 * len(env) > wire.MAX_FIELDS:
            return None  # the daemon would refuse it: run it here
        wire.send_request(sock, request, stderr)  # the daemon writes the plugin's logs there
        return wire.read_reply(sock)
    except (OSError, ValueError, ConnectionError):
        return None
    finally:
        sock.close()


def enable_site() -> None:
    """Cold path: the interpreter was started with -S; add the venv's site-packages now.

    The installer recorded them, so they are appended directly: running `site`
    would also execute every .pth file (the editable-install finder alone costs
    tens of milliseconds). Without a record, fall back to `site.main()`.
    """
    if "site" in sys.modules:
        return
    recorded = getattr(sys.modules.get("__main__"), "SITE_PACKAGES", None)
    if recorded:
        sys.path.extend(p for p in recorded if p not in sys.path)
        return
    import site

    site.main()


def _setup_logging() -> None:
    """Cold path: logs on stderr as RECONCILER_LOG_LEVEL / RECONCILER_LOG_FORMAT say (json or text)."""
    from reconciler.logs import setup_logging

    setup_logging()


def launch(plugin_type: str, argv: list[str] | None = None, try_daemon: bool = True) -> int:
    """Run one plugin call: through the daemon when it answers, else here (`try_daemon=False`: the
    native front already found no daemon)."""
    argv = sys.argv if argv is None else argv
    command = _getenv("CNI_COMMAND")
    if command and command != "VERSION":
        stdin = sys.stdin.buffer.read()
        warm = try_warm(plugin_type, stdin) if try_daemon and _getenv("RECONCILER_NO_WARM") != "1" else None
        if warm is not None:
            code, out = warm
            sys.stdout.buffer.write(out)
            return finish(code)
        enable_site()
        _setup_logging()
        import os

        from reconciler.cni.skel import run

        code, text = run(plugin_type, os.environ, stdin)
        sys.stdout.write(text)
        return finish(code)
    enable_site()
    if plugin_type == "dhcp" and len(argv) > 1 and argv[1] == "daemon":
        from reconciler.plugins.ipam.dhcp import daemon_main

        return int(daemon_main(argv[2:]) or 0)
    _setup_logging()
    from reconciler.cni.skel import main

    return main(plugin_type)


def install(directory: "str | os.PathLike[str]", types: list[str] | None = None) -> list[str]:
    """Write one executable per implemented plugin type into `directory` (atomically, 0755).

    With a C compiler each one is the native front (launcher.c: forwards to the daemon, execs the
    Python launcher's cold path otherwise); without one, the Python launcher script.
    """
    import compileall
    import site
    from pathlib import Path

    from reconciler import native
    from reconciler.cni.registry import implemented

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    package_root = str(Path(__file__).resolve().parent.parent)
    site_packages = [p for p in site.getsitepackages() if Path(p).is_dir()]
    binary = native.build(sys.executable, COLD_CODE.format(paths=[package_root], site_packages=site_packages),
                          DEFAULT_SOCKET)
    written = []
    for ptype in types or implemented():
        path = target / ptype
        tmp = target / f".{ptype}.tmp"
        if binary is not None:
            tmp.write_bytes(binary)
        else:
            tmp.write_text(SCRIPT.format(python=sys.executable, ptype=ptype, paths=[package_root],
                                         site_packages=site_packages))
        tmp.chmod(0o755)
        tmp.replace(path)
        written.append(str(path))
    # bytecode for every module now, so no plugin start ever compiles one (nor fails to cache it)
    compileall.compile_dir(str(Path(__file__).resolve().parent), quiet=2)
    return written
