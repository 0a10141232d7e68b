"""firewall: allow forwarding to and from the container's addresses (iptables backend).

Config: `backend` ("iptables"; "firewalld" is not supported here), and
`iptablesAdminChainName` (default CNI-ADMIN: a chain for the operator's own rules,
created if missing, never flushed), `ingressPolicy` (open | same-bridge | isolated; the
bridge is prevResult's first interface).
Rules live in the filter table of `args.host_netns`, per family of each prevResult IP.
"""

from __future__ import annotations

import ipaddress
import re

from pydantic import field_validator

from reconciler.cni.args import CmdArgs
from reconciler.cni.types import NetConf, Result
from reconciler.cni.version import parse_result
from reconciler.errors import INTERNAL, INVALID_NETWORK_CONFIG, NOT_AVAILABLE, CNIError

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
CHAIN_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,28}$")


class FirewallConf(NetConf):
    backend: str | None = None
    iptables_admin_chain_name: str | None = None
    ingress_policy: str | None = None

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str | None) -> str | None:
        if v not in (None, "", "iptables"):
            raise ValueError(f"backend {v!r} is not supported (only iptables)")
        return v or None

    @field_validator("iptables_admin_chain_name")
    @classmethod
    def _chain(cls, v: str | None) -> str | None:
        if v and not CHAIN_RE.match(v):
            raise ValueError(f"invalid iptables chain name {v!r} (letters, digits, _.-, at most 28)")
        return v or None

    @field_validator("ingress_policy")
    @classmethod
    def _policy(cls, v: str | None) -> str | None:
        if v not in (None, "", "open", "same-bridge", "isolated"):
            raise ValueError(f"unknown ingress policy {v!r} (want open, same-bridge or isolated)")
        return v or None

    @property
    def admin_chain(self) -> str:
        return self.iptables_admin_chain_name or "CNI-ADMIN"


def _prev(conf: FirewallConf, required: bool = True) -> Result | None:
    if conf.prev_result is None:
        if required:
            raise CNIError(INVALID_NETWORK_CONFIG, "missing prevResult from earlier plugin")
        return None
    return parse_result(conf.prev_result, conf.cni_version)


def _ips(result: Result) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [ip.iface.ip for ip in result.ips]


def _bridge(conf: FirewallConf, result: Result) -> str | None:
    """The bridge an ingress policy applies to (prevResult's first interface), or None for "open"."""
    if conf.ingress_policy in (None, "open"):
        return None
    if not result.interfaces or not result.interfaces[0].name:
        raise CNIError(INVALID_NETWORK_CONFIG, f"interface needs to be set for ingress policy "
                       f"{conf.ingress_policy!r}, make sure to chain \"firewall\" plugin with \"bridge\"")
    return result.interfaces[0].name


def add(args: CmdArgs) -> Result:
    from reconciler.kernel.firewall import filter as fw

    conf = args.conf(FirewallConf)
    result = _prev(conf)
    assert result is not None
    bridge = _bridge(conf, result)
    try:
        fw.setup(args.network_name, args.container_id, _ips(result), conf.admin_chain, args.host_netns)
        if bridge and conf.ingress_policy:
            fw.setup_isolation(bridge, {ip.version for ip in _ips(result)}, conf.ingress_policy, args.host_netns)
    except Exception as exc:
        try:
            fw.teardown(args.network_name, args.container_id, _ips(result), args.host_netns)
        finally:
            raise CNIError(INTERNAL, "firewall: failed to add rules", str(exc)) from exc
    return result


def delete(args: CmdArgs) -> None:
    from reconciler.kernel.firewall import filter as fw

    try:
        conf = args.conf(FirewallConf)
    except CNIError:
        return  # DEL of a config that became invalid must not fail
    result = _prev(conf, required=False)
    if result is None:
        return
    try:
        fw.teardown(args.network_name, args.container_id, _ips(result), args.host_netns)
    except Exception as exc:
        raise CNIError(INTERNAL, "firewall: failed to delete rules", str(exc)) from exc


def check(args: CmdArgs) -> None:
    from reconciler.kernel.firewall import filter as fw
    from reconciler.kernel.firewall.base import RuleDrift

    conf = args.conf(FirewallConf)
    result = _prev(conf)
    assert result is not None
    bridge = _bridge(conf, result)
    try:
        fw.check(args.network_name, args.container_id, _ips(result), conf.admin_chain, args.host_netns)
        if bridge and conf.ingress_policy:
            fw.check_isolation(bridge, {ip.version for ip in _ips(result)}, conf.ingress_policy, args.host_netns)
    except RuleDrift as exc:
        raise CNIError(INTERNAL, str(exc)) from exc


def gc(args: CmdArgs) -> None:
    from reconciler.kernel.firewall import filter as fw

    valid = {str(a.get("containerID", "")) for a in args.config.get("cni.dev/valid-attachments") or []
             if isinstance(a, dict)}
    try:
        fw.gc(args.network_name, valid, args.host_netns)
    except Exception as exc:
        raise CNIError(INTERNAL, "firewall: GC failed", str(exc)) from exc


def status(args: CmdArgs) -> None:
    from reconciler.kernel.firewall import iptables

    if not iptables.usable(4, args.host_netns):
        raise CNIError(NOT_AVAILABLE, "firewall: iptables-legacy is not usable")
