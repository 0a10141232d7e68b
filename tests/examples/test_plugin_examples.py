"""examples/plugins: every example loads, names only implemented types, and runs ADD/CHECK/DEL as documented.

The run follows the README's commands (`reconciler cni add|check|del NETWORK NETNS --cache-dir ...`)
but inside a namespace standing in for the host (`ip netns exec <host_ns> ...`), with the cache and
every `dataDir` moved into tmp_path and the masters the README asks for created in that namespace.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reconciler.cni.conf import conflist_from_bytes
from reconciler.cni.registry import PLUGINS, module_for
from tests.conftest import run, unique
from tests.plugins.dhcp.conftest import SERVER_IP, dhcp_daemon, dnsmasq, lan  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "plugins"
FILES = sorted(EXAMPLES.glob("*.conflist"))
PER_CONTAINER_CHAIN = re.compile(r"^:(CNI-(DN-)?[0-9a-f]{16,})", re.M)


@dataclass(frozen=True)
class Case:
    """What running one example must produce."""

    ifaces: tuple[str, ...] = ("eth0",)  # links expected inside the container after ADD
    nets: tuple[str, ...] = ()  # every result IP lies in one of these; one IP per entry
    masters: tuple[str, ...] = ()  # veth pairs (NAME / NAME with a trailing 1) the README creates
    kernel: str | None = None  # link kind this host's kernel must support
    persistent: tuple[str, ...] = ()  # host links the plugin leaves by design (bridges)
    cap_args: dict = field(default_factory=dict)
    skip: str | None = None


CASES: dict[str, Case] = {
    "loopback": Case(ifaces=("lo",)),
    "bridge": Case(nets=("10.233.2.0/24", "fd00:233:2::/64"), persistent=("rcnexbr0",)),
    "ptp": Case(nets=("10.233.3.0/24",)),
    "macvlan": Case(nets=("10.233.4.0/24",), masters=("rcnexmv0",)),
    "ipvlan": Case(nets=("10.233.5.0/24",), masters=("rcnexiv0",), kernel="ipvlan"),
    "host-device": Case(nets=("10.233.6.2/32",), masters=("rcnexhd0",)),
    "tap": Case(nets=("10.233.7.0/24",)),
    "vlan": Case(nets=("10.233.8.0/24",), masters=("rcnexvl0",), kernel="vlan"),
    "dummy": Case(nets=("10.233.9.0/24",), kernel="dummy"),
    "host-local": Case(nets=("10.233.10.0/28", "fd00:233:10::100/120"), persistent=("rcnexhl0",)),
    "static": Case(nets=("10.233.11.10/32", "fd00:233:11::10/128"), persistent=("rcnexst0",)),
    "dhcp": Case(skip="needs a DHCP server and the lease daemon: see test_dhcp_example_add_check_del"),
    "portmap": Case(nets=("10.233.13.0/24",), persistent=("rcnexpm0",),
                    cap_args={"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}),
    "bandwidth": Case(nets=("10.233.14.0/24",)),
    "firewall": Case(nets=("10.233.15.0/24",), persistent=("rcnexfw0",)),
    "tuning": Case(nets=("10.233.16.0/24",)),
    "sbr": Case(nets=("10.233.17.0/24",), persistent=("rcnexsbr0",)),
    "vrf": Case(ifaces=("eth0", "blue"), nets=("10.233.18.0/24",), persistent=("rcnexvrf0",), kernel="vrf"),
}


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_one_example_per_plugin_type():
    assert sorted(p.stem for p in FILES) == sorted(PLUGINS)
    assert sorted(CASES) == sorted(PLUGINS)


def test_network_names_unique():
    names = [_load(p)["name"] for p in FILES]
    assert len(names) == len(set(names)), names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_example_loads_and_uses_implemented_types(path):
    netlist = conflist_from_bytes(path.read_bytes(), str(path))
    assert netlist.name == f"ex-{path.stem}"
    types = []
    for plugin in _load(path)["plugins"]:
        types.append(plugin["type"])
        if isinstance(plugin.get("ipam"), dict) and plugin["ipam"].get("type"):
            types.append(plugin["ipam"]["type"])
    assert path.stem in types
    assert [t for t in types if module_for(t) is None] == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_readme_documents_example(path):
    readme = (EXAMPLES / "README.md").read_text()
    assert f"## {path.stem}\n" in readme
    for verb in ("add", "check", "del"):
        assert f"reconciler cni {verb} ex-{path.stem} /run/netns/ex1" in readme


@pytest.fixture(scope="session")
def kernel_kinds() -> set[str]:
    """Link kinds this kernel can create, probed in a scratch namespace."""
    ns = unique("rcn-probe-")
    run("ip", "netns", "add", ns)
    ok: set[str] = set()
    try:
        run("ip", "-n", ns, "link", "add", "rcnpm", "type", "veth", "peer", "name", "rcnpp")
        probes = {
            "dummy": ("rcnpd", "type", "dummy"),
            "vrf": ("rcnpv", "type", "vrf", "table", "77"),
            "vlan": ("rcnpl", "link", "rcnpm", "type", "vlan", "id", "7"),
            "ipvlan": ("rcnpi", "link", "rcnpm", "type", "ipvlan", "mode", "l2"),
        }
        for kind, spec in probes.items():
            if run("ip", "-n", ns, "link", "add", "name", spec[0], *spec[1:], check=False).returncode == 0:
                ok.add(kind)
    finally:
        run("ip", "netns", "delete", ns, check=False)
    return ok


def _rewrite(conf: dict, tmp: Path) -> dict:
    """Move every on-disk state directory of the example into tmp."""
    for plugin in conf["plugins"]:
        if plugin["type"] == "tuning":
            plugin["dataDir"] = str(tmp / "tuning")
        ipam = plugin.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type") == "host-local":
            ipam["dataDir"] = str(tmp / "ipam")
    return conf


def _host_links(host: str) -> set[str]:
    return {link["ifname"] for link in json.loads(run("ip", "-n", host, "-j", "link", "show").stdout)}


def _firewall_dump(host: str) -> str:
    out = []
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save", "ip6tables-nft-save"):
        res = run("ip", "netns", "exec", host, tool, check=False)
        out.append(res.stdout if res.returncode == 0 else "")
    out.append(run("ip", "netns", "exec", host, "nft", "list", "ruleset", check=False).stdout)
    return "\n".join(out)


def _cni(verb: str, network: str, ctr_path: str, host: str, confdir: Path, cache: Path, caps: dict):
    cmd = ["ip", "netns", "exec", host, sys.executable, "-m", "reconciler", "cni", verb, network, ctr_path,
           "--cache-dir", str(cache)]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NETCONFPATH": str(confdir), "CNI_PATH": "/usr/lib/cni",
           "RECONCILER_PLUGIN_SOCKET": "/run/rcn-tests-no-daemon/plugin.sock"}
    if caps:
        env["CAP_ARGS"] = json.dumps(caps)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def _params() -> list:
    """The runnable cases; kernel-feature ones also carry `kernelvm` so the VM job runs them."""
    return [pytest.param(p, marks=[pytest.mark.kernelvm] if CASES[p].kernel else [], id=p)
            for p in sorted(CASES) if not CASES[p].skip]


@pytest.mark.parametrize("plugin", _params())
def test_example_add_check_del(plugin, make_netns, kernel_kinds, tmp_path):
    case = CASES[plugin]
    if case.kernel and case.kernel not in kernel_kinds:
        pytest.skip(f"this kernel cannot create {case.kernel} links")
    host, _ = make_netns("rcn-h-")
    ctr, ctr_path = make_netns("rcn-t-")
    run("ip", "-n", host, "link", "set", "lo", "up")
    for master in case.masters:
        run("ip", "-n", host, "link", "add", master, "type", "veth", "peer", "name", master[:-1] + "1")
        run("ip", "-n", host, "link", "set", master, "up")
        run("ip", "-n", host, "link", "set", master[:-1] + "1", "up")
    conf = _rewrite(_load(EXAMPLES / f"{plugin}.conflist"), tmp_path)
    _run_example(plugin, conf, case, host, ctr, ctr_path, tmp_path)


def test_dhcp_example_add_check_del(lan, dnsmasq, dhcp_daemon, make_netns, tmp_path):  # noqa: F811
    """The dhcp example against the DHCP test LAN (dnsmasq + our lease daemon) of tests/plugins/dhcp."""
    dnsmasq()
    daemon = dhcp_daemon(via="cli")
    ctr, ctr_path = make_netns("rcn-t-")
    conf = _load(EXAMPLES / "dhcp.conflist")
    conf["plugins"][0]["master"] = lan.master
    conf["plugins"][0]["ipam"]["daemonSocketPath"] = daemon.socket_path
    case = Case(nets=(str(ipaddress.ip_network(f"{SERVER_IP}/24", strict=False)),))
    _run_example("dhcp", conf, case, lan.host_ns, ctr, ctr_path, tmp_path)


def _run_example(plugin: str, conf: dict, case: Case, host: str, ctr: str, ctr_path: str, tmp_path: Path) -> None:
    """ADD, CHECK, DEL, DEL through the CLI in `host`; assert the result, the kernel state and the cleanup."""
    confdir = tmp_path / "conf"
    confdir.mkdir()
    (confdir / f"{plugin}.conflist").write_text(json.dumps(conf))
    network, cache = conf["name"], tmp_path / "cache"
    links_before = _host_links(host)

    def cni(verb: str) -> subprocess.CompletedProcess:
        return _cni(verb, network, ctr_path, host, confdir, cache, case.cap_args)

    added = cni("add")
    assert added.returncode == 0, added.stdout + added.stderr
    result = json.loads(added.stdout)
    assert any(cache.rglob("*")), "ADD left no result cache entry"
    names = [i["name"] for i in result.get("interfaces", [])]
    assert case.ifaces[0] in names, result
    ips = [ipaddress.ip_interface(ip["address"]) for ip in result.get("ips", [])]
    if case.nets:
        assert len(ips) == len(case.nets), result
        for net in case.nets:
            assert any(ip.ip in ipaddress.ip_network(net) for ip in ips), (net, result)
    inside = json.loads(run("ip", "-n", ctr, "-j", "addr", "show").stdout)
    by_name = {link["ifname"]: link for link in inside}
    assert set(case.ifaces) <= set(by_name), sorted(by_name)
    on_links = {a["local"] for link in inside for a in link.get("addr_info", [])}
    assert {str(ip.ip) for ip in ips} <= on_links, (ips, on_links)
    _extra_add_checks(plugin, host, ctr, by_name)

    checked = cni("check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    deleted = cni("del")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    again = cni("del")
    assert again.returncode == 0, again.stdout + again.stderr

    left = _host_links(host) - links_before - set(case.persistent)
    assert not left, f"links left in the host namespace: {sorted(left)}"
    dump = _firewall_dump(host)
    assert not PER_CONTAINER_CHAIN.findall(dump), PER_CONTAINER_CHAIN.findall(dump)
    leaked = [line for line in dump.splitlines() if any(f"{ip.ip}/" in line or f"{ip.ip} " in line for ip in ips)]
    assert not leaked, leaked
    assert not [n for n in json.loads(run("ip", "-n", ctr, "-j", "link", "show").stdout)
                if n["ifname"] != "lo"], "container links left after DEL"


def _extra_add_checks(plugin: str, host: str, ctr: str, links: dict) -> None:
    """Plugin-specific proof that the example's fields took effect."""
    if plugin == "tuning":
        assert links["eth0"]["mtu"] == 1300
        assert "PROMISC" in links["eth0"]["flags"]
    elif plugin == "tap":
        assert links["eth0"]["mtu"] == 1400
        assert links["eth0"]["address"] == "02:00:0a:e9:07:02"
    elif plugin == "bandwidth":
        assert any(n.startswith("bwp") for n in _host_links(host))
        assert "tbf" in run("tc", "-n", host, "qdisc", "show").stdout
    elif plugin == "portmap":
        nat = _firewall_dump(host)
        assert "8080" in nat
    elif plugin == "sbr":
        assert "lookup 100" in run("ip", "-n", ctr, "rule", "show").stdout
    elif plugin == "firewall":
        assert "CNI-FORWARD" in _firewall_dump(host)
    elif plugin == "host-device":
        assert "rcnexhd0" not in _host_links(host)
