"""Differential: the reference dhcp plugin + daemon and ours, against the same dnsmasq."""

from __future__ import annotations

import subprocess

import pytest

from tests.cnitest import exec_plugin
from tests.plugins.dhcp.conftest import daemon_request, netconf, wait_for

pytestmark = pytest.mark.timeout(180)


def shape(result: dict) -> dict:
    """A result with the leased host part of the address masked out (and the reference's empty dns)."""
    ips = [{**ip, "address": "X/" + ip["address"].split("/")[1]} for ip in result.get("ips", [])]
    out = {**result, "ips": ips}
    if out.get("dns") == {}:
        del out["dns"]
    return out


@pytest.mark.parametrize("routes", ["classless", "router-only"])
def test_same_result_as_reference(lan, dnsmasq, dhcp_daemon, plugin_dir, reference_plugins, routes):
    extra = ["--dhcp-option=121,10.99.0.0/16,10.77.0.1,0.0.0.0/0,10.77.0.1"] if routes == "classless" else []
    server = dnsmasq(*extra)
    ours = dhcp_daemon()
    ref_socket = str(lan.tmp / "ref" / "dhcp.sock")
    ref = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lan.host_ns,
            str(reference_plugins / "dhcp"),
            "daemon",
            "-socketpath",
            ref_socket,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: daemon_request(ref_socket, b"") is not None, 20, "the reference daemon")
        _, ours_ns = lan.container()
        _, ref_ns = lan.container()
        requests = [] if routes == "router-only" else [{"option": "121"}]
        ours_conf = netconf(ours.socket_path, request=requests)
        ref_conf = netconf(ref_socket, request=requests)
        got = exec_plugin(plugin_dir / "dhcp", "ADD", ours_conf, netns=ours_ns, container_id="ours")
        want = exec_plugin(reference_plugins / "dhcp", "ADD", ref_conf, netns=ref_ns, container_id="ref")
        assert want.code == 0, want.stdout + want.stderr
        assert got.code == 0, got.stdout + got.stderr
        assert shape(got.json) == shape(want.json)
        assert len(server.leases()) == 2
        assert (
            exec_plugin(plugin_dir / "dhcp", "DEL", ours_conf, netns=ours_ns, container_id="ours").code == 0
        )
        assert (
            exec_plugin(reference_plugins / "dhcp", "DEL", ref_conf, netns=ref_ns, container_id="ref").code
            == 0
        )
        wait_for(lambda: not server.leases(), 20, "both releases")
    finally:
        ref.terminate()
        ref.wait(20)
