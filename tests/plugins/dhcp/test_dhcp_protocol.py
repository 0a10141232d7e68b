"""The daemon's socket under abuse, and the pure parts: config, option decoding, durations."""

from __future__ import annotations

import argparse
import json
import socket
import struct

import pytest

from reconciler.cni.args import CmdArgs
from reconciler.errors import INVALID_NETWORK_CONFIG, CNIError
from reconciler.plugins.ipam.dhcp import config as dconf
from reconciler.plugins.ipam.dhcp.cli import duration
from reconciler.plugins.ipam.dhcp.leaseinfo import classless_routes, static_routes, summarise, to_result
from tests.plugins.dhcp.conftest import daemon_request, netconf

pytestmark = pytest.mark.timeout(120)


def raw_exchange(path: str, payload: bytes, close_early: bool = False) -> bytes:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    try:
        sock.sendall(payload)
        if close_early:
            return b""
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data
    finally:
        sock.close()


def reply_of(data: bytes) -> dict:
    (size,) = struct.unpack("!I", data[:4])
    return json.loads(data[4 : 4 + size])


def framed(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return struct.pack("!I", len(body)) + body


def test_malformed_requests_do_not_kill_the_daemon(lan, dhcp_daemon):
    daemon = dhcp_daemon()
    path = daemon.socket_path
    bad = [
        b"garbage that is not a frame",  # length header of ~1.7 GB
        struct.pack("!I", 10_000_000) + b"{}",  # oversized
        struct.pack("!I", 5) + b"{nope",  # not JSON
        framed([1, 2, 3]),  # not an object
        framed({"op": "explode"}),  # unknown op
        framed({"op": "allocate"}),  # missing fields
        framed(
            {
                "op": "allocate",
                "key": "a/b/eth0",
                "ifname": "eth0",
                "netns": "/run/netns/rcn-none",
                "options": {"client_id": "zz", "requested": [1]},
            }
        ),  # bad hex
        framed(
            {
                "op": "allocate",
                "key": "a/b/eth0",
                "ifname": "eth0",
                "netns": "/run/netns/rcn-none",
                "options": {"client_id": "00", "requested": [1]},
            }
        ),  # netns missing
        framed({"op": "release", "key": 42}),
        struct.pack("!I", 100) + b'{"op":',  # truncated
    ]
    for payload in bad:
        reply = reply_of(raw_exchange(path, payload))
        assert reply["ok"] is False and reply["code"] in (7, 999), reply
        assert reply["msg"]
    raw_exchange(path, struct.pack("!I", 50), close_early=True)  # hang up mid-request
    raw_exchange(path, b"", close_early=True)
    assert daemon_request(path, {"op": "status"})["ok"] is True
    assert daemon.proc.poll() is None


def args_for(conf: dict, cni_args: str = "") -> CmdArgs:
    return CmdArgs.build(
        "ADD", json.dumps(conf).encode(), container_id="c1", netns="/x", ifname="eth0", args=cni_args
    )


def test_session_options_from_config():
    conf = netconf(
        "/tmp/s",
        request=[{"option": "host-name"}, {"option": "42"}],
        provide=[
            {"option": "host-name", "fromArg": "K8S_POD_NAME"},
            {"option": 60, "value": "rcn-vendor"},
            {"option": "user-class", "fromArg": "MISSING"},
        ],
    )
    args = args_for(conf, "IgnoreUnknown=1;K8S_POD_NAME=web-1")
    opts = dconf.session_options(args, args.conf(dconf.DHCPNetConf).ipam)
    assert opts["requested"][: len(dconf.DEFAULT_REQUEST)] == list(dconf.DEFAULT_REQUEST)
    assert opts["requested"][-2:] == [12, 42]
    assert opts["provide"] == {"12": b"web-1".hex(), "60": b"rcn-vendor".hex()}
    assert bytes.fromhex(opts["client_id"]) == b"c1/rcn-dhcp-net/eth0"

    skip = netconf(
        "/tmp/s",
        request=[{"skipDefault": True, "option": "subnet-mask"}],
        provide=[{"option": "dhcp-client-identifier", "value": "mine"}],
    )
    args = args_for(skip)
    opts = dconf.session_options(args, args.conf(dconf.DHCPNetConf).ipam)
    assert opts["requested"] == [1] and bytes.fromhex(opts["client_id"]) == b"mine"


@pytest.mark.parametrize(
    ("ipam", "field"),
    [
        ({"request": [{"option": "no-such-option"}]}, "ipam.request[0].option"),
        ({"provide": [{"option": "host-name"}]}, "ipam.provide[0]"),
        ({"provide": [{"option": 53, "value": "x"}]}, "ipam.provide[0].option"),
        ({"provide": [{"option": 12, "value": "x" * 256}]}, "ipam.provide[0].value"),
        ({"provide": [{"option": 300, "value": "x"}]}, "ipam.provide[0].option"),
    ],
)
def test_bad_options_name_the_field(ipam, field):
    args = args_for(netconf("/tmp/s", **ipam))
    with pytest.raises(CNIError) as err:
        dconf.session_options(args, args.conf(dconf.DHCPNetConf).ipam)
    assert err.value.code == INVALID_NETWORK_CONFIG and field in err.value.msg


def test_bad_timeout_is_a_config_error():
    with pytest.raises(CNIError) as err:
        args_for(netconf("/tmp/s", timeout=-1)).conf(dconf.DHCPNetConf)
    assert err.value.code == INVALID_NETWORK_CONFIG and "timeout" in err.value.msg


def test_client_id_is_truncated_to_254_bytes():
    assert len(dconf.client_id("c" * 300, "net", "eth0").encode()) == 254


def test_classless_and_static_routes():
    # 10.99.0.0/16 via 10.77.0.1, 0.0.0.0/0 via 10.77.0.1, 192.168.5.0/24 on-link
    data = [16, 10, 99, 10, 77, 0, 1, 0, 10, 77, 0, 1, 24, 192, 168, 5, 0, 0, 0, 0]
    assert classless_routes(data) == [
        {"dst": "10.99.0.0/16", "gw": "10.77.0.1"},
        {"dst": "0.0.0.0/0", "gw": "10.77.0.1"},
        {"dst": "192.168.5.0/24", "scope": 253},
    ]
    with pytest.raises(ValueError):
        classless_routes([24, 10, 0])
    assert static_routes([10, 0, 0, 0, 10, 77, 0, 1, 172, 16, 0, 5, 10, 77, 0, 2]) == [
        {"dst": "10.0.0.0/8", "gw": "10.77.0.1"},
        {"dst": "172.16.0.0/16", "gw": "10.77.0.2"},
    ]


def test_summary_and_result():
    lease = {
        "ack": {
            "yiaddr": "10.77.0.60",
            "options": {
                "subnet_mask": "255.255.255.0",
                "router": ["10.77.0.1"],
                "static_route": [10, 9, 0, 0, 10, 77, 0, 3],
            },
        }
    }
    summary = summarise(lease)
    assert summary == {
        "address": "10.77.0.60/24",
        "gateway": "10.77.0.1",
        "routes": [{"dst": "10.0.0.0/8", "gw": "10.77.0.3"}, {"dst": "0.0.0.0/0", "gw": "10.77.0.1"}],
    }
    result = to_result(summary, priority=5).dump()
    assert result["ips"] == [{"address": "10.77.0.60/24", "gateway": "10.77.0.1"}]
    assert all(r["priority"] == 5 for r in result["routes"])
    with pytest.raises(CNIError):
        summarise({"ack": {"yiaddr": "10.77.0.60", "options": {}}})


def test_go_durations():
    assert (
        duration("10s") == 10 and duration("1m30s") == 90 and duration("500ms") == 0.5 and duration("7") == 7
    )
    with pytest.raises(argparse.ArgumentTypeError):
        duration("ten seconds")
