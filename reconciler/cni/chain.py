"""The network-config-list runner, with libcni's semantics.

ADD runs the plugins in order passing each result on as `prevResult`, then
caches the final result; DEL runs them in reverse with the cached result; CHECK
uses the cached result (refused when `disableCheck`); GC first DELs every cached
attachment that is not valid, then sends GC with `cni.dev/valid-attachments`;
STATUS asks each plugin. Capability args become `runtimeConfig` only for
plugins that declare the capability.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from reconciler.cni import cache, registry
from reconciler.cni.args import (
    IGNORE_UNKNOWN,
    CmdArgs,
    validate_container_id,
    validate_ifname,
    validate_network_name,
)
from reconciler.cni.conf import NetworkConfigList, conflist_from_bytes
from reconciler.cni.invoke import run_plugin
from reconciler.cni.types import Result
from reconciler.cni.version import at_least, parse_result, result_for_version
from reconciler.errors import INCOMPATIBLE_VERSION, CNIError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeConf:
    """libcni's RuntimeConf: who the attachment is, plus capability args."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    args: tuple[tuple[str, str], ...] = ()
    capability_args: dict[str, Any] = field(default_factory=dict)


def runtime_args(args: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """CNI_ARGS as container runtimes send them: `IgnoreUnknown=1` first (unless given), so each
    plugin of a chain reads the keys it knows and leaves the others' alone."""
    if not args or any(key == IGNORE_UNKNOWN for key, _ in args):
        return args
    return ((IGNORE_UNKNOWN, "1"), *args)


def plugin_stdin(
    netlist: NetworkConfigList,
    plugin: dict[str, Any],
    rt: RuntimeConf | None,
    prev_result: dict[str, Any] | None,
) -> dict[str, Any]:
    """The stdin libcni builds for one plugin of a list."""
    conf = dict(plugin)
    conf["name"] = netlist.name
    conf["cniVersion"] = netlist.cni_version
    if rt is not None:
        caps = plugin.get("capabilities") or {}
        runtime = {k: v for k, v in rt.capability_args.items() if caps.get(k)}
        if runtime:
            conf["runtimeConfig"] = runtime
    if prev_result is not None:
        conf["prevResult"] = prev_result
    return conf


class Runner:
    """Drives plugin chains; our types in-process unless `exec_mode`. With `ignore_unknown_args` it
    sends CNI_ARGS as container runtimes do (`runtime_args`); without, as given, as cnitool does.
    The cache records the args as given either way."""

    def __init__(
        self,
        cni_path: list[str] | str,
        cache_dir: str,
        exec_mode: bool = False,
        host_netns: str | None = None,
        ignore_unknown_args: bool = False,
    ) -> None:
        self.cni_path = cni_path if isinstance(cni_path, str) else os.pathsep.join(cni_path)
        self.cache_dir = cache_dir
        self.exec_mode = exec_mode
        self.host_netns = host_netns
        self.ignore_unknown_args = ignore_unknown_args

    def _call(
        self, command: str, plugin: dict[str, Any], stdin: dict[str, Any], rt: RuntimeConf | None
    ) -> dict[str, Any] | None:
        args = CmdArgs(
            command=command,
            container_id=rt.container_id if rt else "",
            netns=rt.netns if rt else "",
            ifname=rt.ifname if rt else "",
            args=self._cni_args(rt),
            path=self.cni_path,
            stdin=json.dumps(stdin).encode(),
            host_netns=self.host_netns,
            config=stdin,
        )
        try:
            return run_plugin(plugin["type"], args, exec_mode=self.exec_mode)
        except CNIError as err:
            verb = command.lower()
            raise CNIError(
                err.code, f"plugin type={plugin['type']!r} failed ({verb}): {err.msg}", err.details
            ) from err

    def _cni_args(self, rt: RuntimeConf | None) -> str:
        if rt is None:
            return ""
        pairs = runtime_args(rt.args) if self.ignore_unknown_args else rt.args
        return ";".join(f"{k}={v}" for k, v in pairs)

    def add(self, netlist: NetworkConfigList, rt: RuntimeConf) -> Result:
        return self.add_cached(netlist, rt)[0]

    def add_cached(self, netlist: NetworkConfigList, rt: RuntimeConf,
                   roll_back: bool = False) -> tuple[Result, cache.CacheEntry]:
        """ADD the chain; its result and the cache entry written for it.

        `roll_back`: when the chain fails, DEL (in reverse, with the result they made) the plugins
        whose ADD succeeded, and the one that failed only if it was exec'd: a plugin of ours undoes
        its own failed ADD, and its DEL would remove what was there before it (an interface of the
        same name, the container's address reservations). Without it, the caller DELs, as libcni's
        callers do."""
        validate_container_id(rt.container_id)
        validate_network_name(netlist.name)
        validate_ifname(rt.ifname)
        prev: dict[str, Any] | None = None
        done = 0  # plugins whose ADD succeeded
        try:
            for plugin in netlist.plugins:
                prev = self._call("ADD", plugin, plugin_stdin(netlist, plugin, rt, prev), rt)
                done += 1
            return self._finish_add(netlist, rt, prev)
        except BaseException:
            if roll_back:
                failed = [p for p in netlist.plugins[done:done + 1] if not self._undoes_own_add(p)]
                self._delete_plugins(netlist, [*netlist.plugins[:done], *failed], rt, prev)
            raise

    def _undoes_own_add(self, plugin: dict[str, Any]) -> bool:
        """A plugin of ours, run in-process: a failed ADD of it leaves nothing behind."""
        return not self.exec_mode and registry.module_for(str(plugin.get("type", ""))) is not None

    def _delete_plugins(self, netlist: NetworkConfigList, plugins: list[dict[str, Any]], rt: RuntimeConf,
                        prev: dict[str, Any] | None) -> None:
        """Best-effort DEL of `plugins` in reverse order (a failed ADD's roll-back): failures are logged."""
        prev = prev if at_least(netlist.cni_version, "0.4.0") else None
        for plugin in reversed(plugins):
            try:
                self._call("DEL", plugin, plugin_stdin(netlist, plugin, rt, prev), rt)
            except CNIError as err:
                log.warning("rolling back %s/%s/%s: %s", netlist.name, rt.container_id, rt.ifname, err)

    def _finish_add(self, netlist: NetworkConfigList, rt: RuntimeConf,
                    prev: dict[str, Any] | None) -> tuple[Result, cache.CacheEntry]:
        if prev is None:
            raise CNIError(INCOMPATIBLE_VERSION, f"network {netlist.name!r}: no result from the chain")
        result = parse_result(prev, netlist.cni_version)
        prev = result_for_version(result, netlist.cni_version)
        entry = cache.CacheEntry(
            container_id=rt.container_id,
            network_name=netlist.name,
            ifname=rt.ifname,
            netns=rt.netns,
            config=netlist.raw,
            cni_args=list(rt.args),
            capability_args=rt.capability_args,
            result=prev,
        )
        cache.write(self.cache_dir, entry)
        return result, entry

    def cached_result(self, netlist: NetworkConfigList, rt: RuntimeConf,
                      entry: cache.CacheEntry | None = None) -> dict[str, Any] | None:
        """The cached result in `netlist`'s version (`entry`: the attachment's entry, already read)."""
        if entry is None:
            entry = cache.read(self.cache_dir, netlist.name, rt.container_id, rt.ifname)
        if entry is None or entry.result is None:
            return None
        try:
            result = parse_result(entry.result, netlist.cni_version)
            return result_for_version(result, netlist.cni_version)
        except CNIError:
            return None

    def check(self, netlist: NetworkConfigList, rt: RuntimeConf, entry: cache.CacheEntry | None = None) -> None:
        if not at_least(netlist.cni_version, "0.4.0"):
            raise CNIError(
                INCOMPATIBLE_VERSION,
                f"configuration version {netlist.cni_version!r} does not support the CHECK command",
            )
        if netlist.disable_check:
            return
        prev = self.cached_result(netlist, rt, entry)
        if prev is None:
            raise CNIError(
                3, f"no cached result for {netlist.name}/{rt.container_id}/{rt.ifname}: was it added?"
            )
        for plugin in netlist.plugins:
            self._call("CHECK", plugin, plugin_stdin(netlist, plugin, rt, prev), rt)

    def delete(self, netlist: NetworkConfigList, rt: RuntimeConf, keep_cache: bool = False) -> None:
        """DEL in reverse order, then drop the cache entry (`keep_cache`: the caller drops it once
        the DEL's effects are known to have landed, so a DEL to redo still finds its config)."""
        prev = self.cached_result(netlist, rt) if at_least(netlist.cni_version, "0.4.0") else None
        for plugin in reversed(netlist.plugins):
            self._call("DEL", plugin, plugin_stdin(netlist, plugin, rt, prev), rt)
        if not keep_cache:
            cache.delete(self.cache_dir, netlist.name, rt.container_id, rt.ifname)

    def delete_cached(self, entry: cache.CacheEntry, keep_cache: bool = False) -> None:
        """DEL an attachment using only what its cache entry holds (its network file may be gone)."""
        netlist = conflist_from_bytes(entry.config, f"cache:{entry.network_name}")
        rt = RuntimeConf(
            entry.container_id, entry.netns, entry.ifname, tuple(entry.cni_args), entry.capability_args
        )
        self.delete(netlist, rt, keep_cache)

    def gc(self, netlist: NetworkConfigList, valid: list[tuple[str, str]]) -> list[CNIError]:
        """libcni GCNetworkList: DEL stale cached attachments, then GC every plugin; errors collected."""
        if netlist.disable_gc:
            return []
        errors: list[CNIError] = []
        valid_set = set(valid)
        for entry in cache.list_entries(self.cache_dir, netlist.name):
            if (entry.container_id, entry.ifname) in valid_set:
                continue
            rt = RuntimeConf(
                entry.container_id, entry.netns, entry.ifname, tuple(entry.cni_args), entry.capability_args
            )
            try:
                self.delete(netlist, rt)
            except CNIError as err:
                errors.append(err)
        if at_least(netlist.cni_version, "1.1.0"):
            attachments = [{"containerID": cid, "ifname": ifname} for cid, ifname in valid]
            for plugin in netlist.plugins:
                stdin = plugin_stdin(netlist, plugin, None, None)
                stdin["cni.dev/valid-attachments"] = attachments
                stdin["cni.dev/attachments"] = attachments
                try:
                    self._call("GC", plugin, stdin, None)
                except CNIError as err:
                    errors.append(err)
        return errors

    def status(self, netlist: NetworkConfigList) -> None:
        if not at_least(netlist.cni_version, "1.1.0"):
            return
        for plugin in netlist.plugins:
            self._call("STATUS", plugin, plugin_stdin(netlist, plugin, None, None), None)
