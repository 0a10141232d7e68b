"""One exception tree for the whole project.

`CNIError` is what a plugin verb raises; it serialises to the spec's error
JSON. `ReconcilerError` and its children are the engine's errors; `cli.py`
maps them to exit codes in one place.
"""

from __future__ import annotations

import json

# Well-known CNI error codes (SPEC.md "Error" section, plus libcni's 8 and 999).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
INVALID_NETNS = 8
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
INTERNAL = 999


class CNIError(Exception):
    """A CNI error result: ``{"code": N, "msg": "...", "details": "..."}``."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg if not details else f"{msg}: {details}")
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str | None = None) -> dict:
        out: dict = {}
        if cni_version:
            out["cniVersion"] = cni_version
        out["code"] = self.code
        out["msg"] = self.msg
        if self.details:
            out["details"] = self.details
        return out

    def to_json(self, cni_version: str | None = None) -> str:
        return json.dumps(self.to_dict(cni_version))

    @classmethod
    def from_dict(cls, data: dict) -> CNIError:
        return cls(int(data.get("code", INTERNAL)), str(data.get("msg", "")), str(data.get("details", "")))


def config_error(field: str, problem: str) -> CNIError:
    """Invalid network configuration, naming the offending field."""
    return CNIError(INVALID_NETWORK_CONFIG, f"invalid network config: {field}: {problem}")


class ReconcilerError(Exception):
    """Root of the engine's errors."""


class SpecError(ReconcilerError, ValueError):
    """A spec file is invalid; names the file, the field and the line if known."""

    def __init__(self, path: str, field: str, problem: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")
        self.path = path
        self.field = field
        self.problem = problem
        self.line = line


class LockBusy(ReconcilerError, RuntimeError):
    """Another reconciler holds the state lock."""


class StateError(ReconcilerError, OSError):
    """The state directory cannot be read or written."""
