"""Build the native front of the installed plugins (launcher.c) with the host's C compiler.

Used by `reconciler plugins install`. Returns None when there is no compiler or
the build fails (the Python launcher is installed then), or when
RECONCILER_NATIVE_LAUNCHER=0 asks for the Python launcher.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("launcher.c")


def _c_string(text: str) -> str | None:
    """A C string literal for `text` (JSON's escapes are C's for ASCII); None if it is not ASCII."""
    return json.dumps(text) if text.isascii() else None


def build(python: str, cold_code: str, default_socket: str) -> bytes | None:
    """The compiled launcher, or None (no compiler, disabled, or the build failed)."""
    if os.environ.get("RECONCILER_NATIVE_LAUNCHER") == "0":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc"))
    literals = [_c_string(python), _c_string(cold_code), _c_string(default_socket)]
    if compiler is None or not SOURCE.is_file() or None in literals:
        return None
    with tempfile.TemporaryDirectory(prefix="rcn-launcher-") as tmp:
        header = Path(tmp) / "launcher_config.h"
        header.write_text("#define RCN_PYTHON {}\n#define RCN_COLD_CODE {}\n#define RCN_DEFAULT_SOCKET {}\n"
                          .format(*literals))
        binary = Path(tmp) / "launcher"
        proc = subprocess.run([compiler, "-O2", "-Wall", "-Werror", "-I", tmp, "-o", str(binary), str(SOURCE)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            log.warning("native launcher not built (%s): %s; installing the Python launcher", compiler,
                        proc.stderr.strip()[-500:])
            return None
        return binary.read_bytes()
