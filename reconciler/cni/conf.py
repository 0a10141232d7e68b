"""Network configuration files, loaded with libcni's rules.

- `.conflist` files sorted by name, the first whose `name` matches wins;
- unless `loadOnlyInlinedPlugins`, `.conf` files of the sibling directory
  `<dir>/<name>/` are appended to its plugins (sorted);
- legacy single-plugin `.conf`/`.json` files are up-converted to a list;
- `cniVersions` picks the highest version we implement.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reconciler.cni.args import validate_network_name, validation_error
from reconciler.cni.types import NetConfList
from reconciler.cni.version import ALL_VERSIONS, parse_version
from reconciler.errors import DECODING_FAILURE, INVALID_NETWORK_CONFIG, CNIError

LIST_EXTENSIONS = (".conflist",)
SINGLE_EXTENSIONS = (".conf", ".json")


@dataclass(frozen=True)
class NetworkConfigList:
    """A validated network config list; `plugins` are the raw plugin objects, passed through untouched."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    disable_check: bool = False
    disable_gc: bool = False
    load_only_inlined_plugins: bool = False
    raw: bytes = b""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def capabilities(self) -> set[str]:
        caps: set[str] = set()
        for plugin in self.plugins:
            caps.update(k for k, v in (plugin.get("capabilities") or {}).items() if v)
        return caps


def negotiate_version(version: str, versions: list[str] | None) -> str:
    """libcni: the highest entry of `cniVersions` we implement, else `cniVersion`."""
    if not versions:
        return version
    known = [v for v in versions if v in ALL_VERSIONS]
    for entry in versions:
        parse_version(entry)  # an invalid entry is a parse error
    return max(known, key=parse_version) if known else version


def _decode(data: bytes, source: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CNIError(
            DECODING_FAILURE, f"{source or 'config'}: error parsing configuration list", str(exc)
        ) from exc
    if not isinstance(obj, dict):
        raise CNIError(DECODING_FAILURE, f"{source or 'config'}: configuration is not a JSON object")
    return obj


def conflist_from_bytes(data: bytes, source: str = "") -> NetworkConfigList:
    """Parse a `.conflist` or a legacy single `.conf`; errors name the file and field (code 7)."""
    obj = _decode(data, source)
    where = f"{source}: " if source else ""
    if "plugins" not in obj:
        if "type" not in obj:
            raise CNIError(INVALID_NETWORK_CONFIG, f"{where}no 'plugins' key and no plugin 'type'")
        obj = {"cniVersion": obj.get("cniVersion", ""), "name": obj.get("name", ""), "plugins": [obj]}
        data = json.dumps(obj).encode()
    plugins = obj.get("plugins")
    if not isinstance(plugins, list):
        raise CNIError(
            INVALID_NETWORK_CONFIG, f"{where}plugins: error parsing configuration list: not a list"
        )
    if not plugins:
        raise CNIError(INVALID_NETWORK_CONFIG, f"{where}plugins: empty plugins list")
    try:
        model = NetConfList.model_validate(obj)
    except ValidationError as exc:
        raise validation_error(exc, where) from exc
    for index, plugin in enumerate(plugins):
        if not isinstance(plugin, dict):
            raise CNIError(INVALID_NETWORK_CONFIG, f"{where}plugins.{index}: not an object")
        ptype = plugin.get("type")
        if not isinstance(ptype, str) or not ptype:
            raise CNIError(INVALID_NETWORK_CONFIG, f"{where}plugins.{index}.type: missing plugin type")
        if os.sep in ptype:
            raise CNIError(
                INVALID_NETWORK_CONFIG, f"{where}plugins.{index}.type: invalid plugin type {ptype!r}"
            )
    try:
        validate_network_name(model.name)
    except CNIError as err:
        raise CNIError(err.code, f"{where}name: {err.msg}", err.details) from err
    version = negotiate_version(model.cni_version, model.cni_versions)
    return NetworkConfigList(
        name=model.name,
        cni_version=version,
        plugins=tuple(plugins),
        disable_check=model.disable_check,
        disable_gc=model.disable_gc,
        load_only_inlined_plugins=model.load_only_inlined_plugins,
        raw=data,
        source=source,
    )


def _files(directory: Path, extensions: tuple[str, ...]) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.suffix in extensions and p.is_file())
    except FileNotFoundError:
        return []


def _with_sibling_confs(netlist: NetworkConfigList, directory: Path) -> NetworkConfigList:
    if netlist.load_only_inlined_plugins:
        return netlist
    extra = [_decode(p.read_bytes(), str(p)) for p in _files(directory / netlist.name, (".conf",))]
    if not extra:
        return netlist
    obj = json.loads(netlist.raw)
    obj["plugins"] = list(obj.get("plugins", [])) + extra
    return conflist_from_bytes(json.dumps(obj).encode(), netlist.source)


def load_network(directory: str | Path, name: str) -> NetworkConfigList:
    """libcni LoadNetworkConf: the network `name` from `directory`."""
    directory = Path(directory)
    for path in _files(directory, LIST_EXTENSIONS):
        netlist = conflist_from_bytes(path.read_bytes(), str(path))
        if netlist.name == name:
            return _with_sibling_confs(netlist, directory)
    for path in _files(directory, SINGLE_EXTENSIONS):
        netlist = conflist_from_bytes(path.read_bytes(), str(path))
        if netlist.name == name:
            return netlist
    raise CNIError(INVALID_NETWORK_CONFIG, f"no net configuration with name {name!r} in {directory}")
