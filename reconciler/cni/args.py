"""The arguments of one plugin call: environment, stdin, and their validation.

`CmdArgs` is what every plugin verb receives, whether it was exec'd by a
runtime, called by our chain runner in-process, or forwarded by the warm-path
daemon. Plugins never read `os.environ` themselves.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from reconciler.errors import (
    DECODING_FAILURE,
    INVALID_ENVIRONMENT,
    INVALID_NETWORK_CONFIG,
    UNKNOWN_CONTAINER,
    CNIError,
    config_error,
)

ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
M = TypeVar("M", bound=BaseModel)


def validate_container_id(container_id: str) -> None:
    if not container_id:
        raise CNIError(UNKNOWN_CONTAINER, "missing containerID")
    if not ID_RE.match(container_id):
        raise CNIError(INVALID_ENVIRONMENT, "invalid characters in containerID", container_id)


def validate_ifname(ifname: str) -> None:
    """Linux interface name rules, as libcni's utils.ValidateInterfaceName."""
    if not ifname:
        raise CNIError(INVALID_ENVIRONMENT, "interface name is empty")
    if len(ifname.encode()) > 15:
        raise CNIError(
            INVALID_ENVIRONMENT,
            "interface name is too long",
            "interface name should be less than 16 characters",
        )
    if ifname in (".", ".."):
        raise CNIError(INVALID_ENVIRONMENT, "interface name is . or ..")
    for ch in ifname:
        if ch in "/:" or ch.isspace():
            raise CNIError(
                INVALID_ENVIRONMENT, "interface name contains / or : or whitespace characters", ifname
            )


def validate_network_name(name: str) -> None:
    if not name:
        raise CNIError(INVALID_NETWORK_CONFIG, "missing network name")
    if not ID_RE.match(name):
        raise CNIError(INVALID_NETWORK_CONFIG, "invalid characters found in network name", name)


IGNORE_UNKNOWN = "IgnoreUnknown"
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})  # Go's strconv.ParseBool
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_cni_args(raw: str) -> dict[str, str]:
    """`K1=V1;K2=V2` -> dict. Unknown keys are the reading plugin's business (`refuse_unknown_args`)."""
    out: dict[str, str] = {}
    if not raw:
        return out
    for pair in raw.split(";"):
        if not pair:
            continue
        parts = pair.split("=")
        if len(parts) != 2:
            raise CNIError(INVALID_ENVIRONMENT, f"ARGS: invalid pair {pair!r}")
        out[parts[0]] = parts[1]
    return out


def refuse_unknown_args(pairs: dict[str, str], known: tuple[str, ...], reader: str) -> None:
    """Refuse keys outside `known` (what plugin `reader` reads) unless `IgnoreUnknown` is true, as the reference's LoadArgs does.

    Runtimes send `IgnoreUnknown=1` with keys meant for other plugins of the chain; without it a
    misspelt key (`Ip=`) is an error, not an address silently chosen by someone else.
    """
    flag = pairs.get(IGNORE_UNKNOWN)
    if flag is not None and flag not in _TRUE and flag not in _FALSE:
        raise CNIError(INVALID_ENVIRONMENT, f"CNI_ARGS {IGNORE_UNKNOWN}={flag!r} is not a boolean", "use 1 or 0")
    if flag in _TRUE:
        return
    unknown = [key for key in pairs if key not in known and key != IGNORE_UNKNOWN]
    if unknown:
        reads = ", ".join(known) if known else "no keys"
        raise CNIError(
            INVALID_ENVIRONMENT,
            f"CNI_ARGS: unknown {'key' if len(unknown) == 1 else 'keys'} {', '.join(map(repr, unknown))}",
            f"{reader} reads {reads}; add {IGNORE_UNKNOWN}=1 to pass keys meant for other plugins",
        )


@dataclass(frozen=True)
class CmdArgs:
    """One verb's inputs (the skel's CmdArgs, plus the decoded config)."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: str = ""
    path: str = ""
    stdin: bytes = b""
    host_netns: str | None = None  # the caller's netns for host-side work; None = ours
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, command: str, stdin: bytes, **kwargs: Any) -> CmdArgs:
        return cls(command=command, stdin=stdin, config=decode_config(stdin), **kwargs)

    def with_config(self, config: dict[str, Any], command: str | None = None) -> CmdArgs:
        """The same call with another stdin (delegation, chains)."""
        data = json.dumps(config).encode()
        return replace(self, config=config, stdin=data, command=command or self.command)

    @property
    def cni_version(self) -> str:
        return str(self.config.get("cniVersion") or "0.1.0")

    @property
    def network_name(self) -> str:
        return str(self.config.get("name") or "")

    @property
    def cni_args(self) -> dict[str, str]:
        return parse_cni_args(self.args)

    def known_args(self, reader: str, *known: str) -> dict[str, str]:
        """CNI_ARGS for plugin `reader`, which reads the `known` keys: on ADD any other key is refused
        (`refuse_unknown_args`); other verbs read leniently, so a DEL never fails over its args."""
        pairs = parse_cni_args(self.args)
        if self.command == "ADD":
            refuse_unknown_args(pairs, known, reader)
        return pairs

    def conf(self, model: type[M]) -> M:
        """Validate the config against a plugin's model; errors name the field (code 7)."""
        try:
            return model.model_validate(self.config)
        except ValidationError as exc:
            raise validation_error(exc) from exc

    def runtime_config(self) -> dict[str, Any]:
        rc = self.config.get("runtimeConfig")
        return rc if isinstance(rc, dict) else {}


# The keys every network config shares (libcni's NetConf), matched case-insensitively as Go's
# decoder does, and the JSON type it insists on; null leaves them unset.
_SHARED_KEYS: dict[str, tuple[type, str]] = {
    "cniversion": (str, "a string"), "name": (str, "a string"), "type": (str, "a string"),
    "capabilities": (dict, "an object"), "ipam": (dict, "an object"), "dns": (dict, "an object"),
    "prevresult": (dict, "an object"),
}
_JSON_TYPES = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array", dict: "an object"}


def decode_config(stdin: bytes) -> dict[str, Any]:
    """The network config on stdin as a dict: a decoding failure (6) unless it is a JSON object
    whose shared keys have their JSON types (an empty stdin is not a config)."""
    try:
        data = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CNIError(DECODING_FAILURE, "error parsing configuration", str(exc)) from exc
    if not isinstance(data, dict):
        raise CNIError(DECODING_FAILURE, "error parsing configuration", "network config is not a JSON object")
    for key, value in data.items():
        want = _SHARED_KEYS.get(key.lower())
        if want is not None and value is not None and not isinstance(value, want[0]):
            raise CNIError(DECODING_FAILURE, "error parsing configuration",
                           f"{key}: must be {want[1]}, not {_JSON_TYPES.get(type(value), 'a value')} {json.dumps(value)}")
    return data


def _problem(err: Any, field: str = "") -> tuple[str, str]:
    """(the key path that failed, under `field`; the message without pydantic's "Value error, ")."""
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
    path = f"{field}.{loc}" if field and loc else field or loc
    return path, str(err.get("msg", "invalid")).removeprefix("Value error, ")


def field_error(exc: ValidationError, field: str) -> CNIError:
    """The first problem of validating `field`'s value as code 7, naming the key inside it that failed
    (`ipam.routes[0].gw`, not `ipam.routes[0]`)."""
    return config_error(*_problem(exc.errors()[0] if exc.errors() else {}, field))


def validation_error(exc: ValidationError, prefix: str = "") -> CNIError:
    """A pydantic error as CNI code 7, naming the field path of the first problems (`prefix`: where)."""
    problems = []
    for err in exc.errors()[:3]:
        path, msg = _problem(err)
        problems.append(f"{prefix}{path}: {msg}" if path else f"{prefix}{msg}")
    return CNIError(INVALID_NETWORK_CONFIG, "invalid network config: " + "; ".join(problems))
