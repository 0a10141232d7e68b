"""bandwidth: shape a veth attachment with tbf, as the reference plugin does.

- ingress (towards the container): a tbf root qdisc on the host veth;
- egress (from the container): an ifb `bwp<sha512[:12]>`, an ingress qdisc on
  the host veth redirecting everything to it, and a tbf on the ifb.

Rates are bits/s and bursts bits, from the config's top-level fields or the
`bandwidth` capability (top-level fields win). A direction whose rate and burst
are both zero/absent is left unshaped. DEL removes the ifb and our qdiscs on
the host veth; GC removes ifbs this network created for attachments that are
no longer valid (recognised by the ifalias we set; others are never touched).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from pydantic import field_validator

from reconciler.cni.args import CmdArgs
from reconciler.cni.types import Interface, NetConf, Result
from reconciler.cni.version import parse_result
from reconciler.errors import INTERNAL, CNIError, config_error

if TYPE_CHECKING:
    from reconciler.kernel.tc import Qdiscs, Tbf

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
MAX_BURST_BYTES = 2**32 - 1
ALIAS_PREFIX = "cni-reconciler bandwidth"
FIELDS = ("ingressRate", "ingressBurst", "egressRate", "egressBurst")


class BandwidthConf(NetConf):
    ingress_rate: int | None = None
    ingress_burst: int | None = None
    egress_rate: int | None = None
    egress_burst: int | None = None

    @field_validator("ingress_rate", "ingress_burst", "egress_rate", "egress_burst", mode="before")
    @classmethod
    def _unsigned(cls, v: Any) -> Any:
        if isinstance(v, bool) or (v is not None and not isinstance(v, int)):
            raise ValueError("must be a non-negative integer")
        if v is not None and v < 0:
            raise ValueError(f"must be a non-negative integer, got {v}")
        return v


def _limits(conf: BandwidthConf, args: CmdArgs) -> dict[str, int]:
    """The effective limits: top-level fields when any is present, else the `bandwidth` capability."""
    top = {f: getattr(conf, _snake(f)) for f in FIELDS}
    if any(v is not None for v in top.values()):
        source = "config"
        values = top
    else:
        source = "runtimeConfig.bandwidth"
        cap = args.runtime_config().get("bandwidth") or {}
        if not isinstance(cap, dict):
            raise config_error(source, "must be an object")
        values = {f: _cap_value(cap, f, source) for f in FIELDS}
    out = {f: int(v or 0) for f, v in values.items()}
    for direction in ("ingress", "egress"):
        _validate(out[f"{direction}Rate"], out[f"{direction}Burst"], direction, source)
    return out


def _cap_value(cap: dict[str, Any], field: str, source: str) -> int | None:
    value = next((v for k, v in cap.items() if k.lower() == field.lower()), None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise config_error(f"{source}.{field}", f"must be a non-negative integer, got {value!r}")
    return value


def _snake(field: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in field)


def _validate(rate: int, burst: int, direction: str, source: str) -> None:
    where = f"{source}.{direction}"
    if rate and not burst:
        raise config_error(f"{where}Burst", f"{direction}Rate is set, so {direction}Burst must be set too")
    if burst and not rate:
        raise config_error(f"{where}Rate", f"{direction}Burst is set, so {direction}Rate must be set too")
    if rate and rate < 8:
        raise config_error(f"{where}Rate", f"must be at least 8 bits/s, got {rate}")
    if burst // 8 >= MAX_BURST_BYTES:
        raise config_error(f"{where}Burst", "burst cannot be more than 4GB")
    if rate // 8 > MAX_BURST_BYTES:
        raise config_error(f"{where}Rate", f"rates above {MAX_BURST_BYTES * 8} bits/s are not supported")


def _prev(conf: BandwidthConf) -> Result:
    if conf.prev_result is None:
        raise config_error("prevResult", "bandwidth must be called as a chained plugin")
    return parse_result(conf.prev_result, conf.cni_version)


def _host_veth(result: Result, args: CmdArgs) -> str:
    """The host-side veth of CNI_IFNAME: its peer, which prevResult must list without a sandbox."""
    from reconciler.kernel import links
    from reconciler.kernel.netns import KernelError

    try:
        peer = links.peer_index(args.ifname, args.netns) or 0
    except KernelError as exc:
        raise CNIError(INTERNAL, f"container interface {args.ifname} has no veth peer", str(exc)) from exc
    link = links.by_index(peer, args.host_netns) if peer > 0 else None
    if link is None:
        raise CNIError(INTERNAL, f"veth peer of {args.ifname} (ifindex {peer}) not found on the host")
    for iface in result.interfaces:
        if not iface.sandbox and iface.name == link.name:
            return link.name
    raise CNIError(INTERNAL, f"no host interface found for container {args.ifname}")


def _alias(args: CmdArgs) -> str:
    return f"{ALIAS_PREFIX} net={args.network_name} ctr={args.container_id}"


def add(args: CmdArgs) -> Result:
    """Shape the attachment; the result is prevResult plus the ifb when egress is shaped."""
    from reconciler.kernel import links, tc

    conf = args.conf(BandwidthConf)
    limits = _limits(conf, args)
    result = _prev(conf)
    if not any(limits.values()):
        return result
    host = _host_veth(result, args)
    hns = args.host_netns
    with contextlib.ExitStack() as undo:
        try:
            if limits["ingressRate"]:
                tc.set_tbf(host, tc.Tbf.from_bits(limits["ingressRate"], limits["ingressBurst"]), hns)
                undo.callback(tc.clear_qdiscs, host, hns, root=True, ingress=False)
            if limits["egressRate"]:
                name = tc.ifb_name(args.network_name, args.container_id)
                veth = links.find(host, hns)
                mtu = veth.mtu if veth else 1500
                ifb, created = tc.ensure_ifb(name, mtu, hns, alias=_alias(args))
                if created:
                    undo.callback(links.delete, name, hns)
                tc.set_tbf(name, tc.Tbf.from_bits(limits["egressRate"], limits["egressBurst"]), hns)
                tc.set_ingress_redirect(host, name, hns)
                undo.callback(tc.clear_qdiscs, host, hns, root=False, ingress=True)
                if not any(i.name == name and not i.sandbox for i in result.interfaces):
                    result.interfaces.append(Interface(name=name, mac=ifb.mac))
        except (tc.TcError, ValueError, OSError) as exc:  # KernelError is an OSError
            raise CNIError(INTERNAL, "bandwidth: failed to set up shaping", str(exc)) from exc
        undo.pop_all()
    return result


def delete(args: CmdArgs) -> None:
    """Remove the ifb, and our qdiscs on the host veth if the container's veth is still there."""
    from reconciler.kernel import links, tc
    from reconciler.kernel.netns import KernelError

    links.delete(tc.ifb_name(args.network_name, args.container_id), args.host_netns)
    if not args.netns:
        return
    try:
        peer = links.peer_index(args.ifname, args.netns) or 0
    except KernelError:
        return  # the netns or the veth is gone, and the host end with it
    link = links.by_index(peer, args.host_netns) if peer > 0 else None
    if link is not None and _listed_host_iface(args, link.name):
        tc.clear_qdiscs(link.name, args.host_netns)


def _listed_host_iface(args: CmdArgs, name: str) -> bool:
    """Only touch the host veth when the cached result names it (never a foreign link)."""
    prev = args.config.get("prevResult")
    if not isinstance(prev, dict):
        return False
    return any(isinstance(i, dict) and i.get("name") == name and not i.get("sandbox") for i in prev.get("interfaces") or [])


def check(args: CmdArgs) -> None:
    """The tbf on the host veth and on the ifb, and the redirect between them, match the config."""
    from reconciler.kernel import links, tc

    conf = args.conf(BandwidthConf)
    limits = _limits(conf, args)
    result = _prev(conf)
    if not any(limits.values()):
        return
    host = _host_veth(result, args)
    hns = args.host_netns
    qdiscs = tc.read_qdiscs(hns)  # the host's qdiscs, read once for the three checks below
    if limits["ingressRate"]:
        _check_tbf(host, tc.Tbf.from_bits(limits["ingressRate"], limits["ingressBurst"]), hns, qdiscs)
    if limits["egressRate"]:
        name = tc.ifb_name(args.network_name, args.container_id)
        ifb = links.find(name, hns)
        if ifb is None or ifb.kind != "ifb":
            raise CNIError(INTERNAL, f"bandwidth: ifb device {name} not found")
        _check_tbf(name, tc.Tbf.from_bits(limits["egressRate"], limits["egressBurst"]), hns, qdiscs)
        if ifb.index not in tc.read_redirect(host, hns, qdiscs):
            raise CNIError(INTERNAL, f"bandwidth: no redirect from {host} to {name}")


def _check_tbf(dev: str, want: Tbf, netns: str | None, qdiscs: Qdiscs) -> None:
    from reconciler.kernel import tc

    have = tc.read_tbf(dev, netns, qdiscs)
    if have is None:
        raise CNIError(INTERNAL, f"bandwidth: no tbf qdisc on {dev}")
    if have.rate != want.rate:
        raise CNIError(INTERNAL, f"bandwidth: tbf rate on {dev} is {have.rate} bytes/s, want {want.rate}")
    if have.limit != want.limit:
        raise CNIError(INTERNAL, f"bandwidth: tbf limit on {dev} is {have.limit} bytes, want {want.limit}")
    if abs(have.buffer - want.buffer) > 1:  # float rounding of the tick conversion
        raise CNIError(INTERNAL, f"bandwidth: tbf buffer on {dev} is {have.buffer} ticks, want {want.buffer}")


def gc(args: CmdArgs) -> None:
    """Delete ifbs this network made for attachments not in `cni.dev/valid-attachments`."""
    from reconciler.kernel import links, tc

    valid = args.config.get("cni.dev/valid-attachments") or args.config.get("cni.dev/attachments") or []
    keep = {tc.ifb_name(args.network_name, str(a.get("containerID", ""))) for a in valid if isinstance(a, dict)}
    prefix = f"{ALIAS_PREFIX} net={args.network_name} "
    errors = []
    for link in links.list_links(args.host_netns):
        if link.kind == "ifb" and link.alias.startswith(prefix) and link.name not in keep:
            try:
                links.delete(link.name, args.host_netns)
            except OSError as exc:
                errors.append(f"{link.name}: {exc}")
    if errors:
        raise CNIError(INTERNAL, "bandwidth: GC failed for some ifb devices", "; ".join(errors))
