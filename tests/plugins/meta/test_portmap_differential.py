"""portmap vs the reference (/usr/lib/cni/portmap v1.1.1, iptables-only): same nat rules.

Each side gets its own host namespace with the same bridge network, so the container gets
the same address and the chain hashes match. The reference writes through `iptables` (the
nft variant on this host), ours through iptables-legacy; the normalised dumps must agree.
"""

from __future__ import annotations

import pytest

from tests.firewall.env import REF, World, nat_lines, portmap_conf, run_plugin, sh

pytestmark = pytest.mark.usefixtures("reference_plugins")

CASES = {
    "basic": ([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}], {}),
    "multi": ([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
               {"hostPort": 8053, "containerPort": 53, "protocol": "udp"},
               {"hostPort": 8443, "containerPort": 443, "protocol": "tcp", "hostIP": "10.251.0.1"},
               {"hostPort": 9000, "containerPort": 9000, "protocol": "sctp"}], {}),
    "many": ([{"hostPort": 10000 + i, "containerPort": 80, "protocol": "tcp"} for i in range(20)], {}),
    "nosnat": ([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}], {"snat": False}),
    "markbit": ([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}], {"markMasqBit": 5}),
    "external": ([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}], {"externalSetMarkChain": "RCN-MARK"}),
    "conditions": ([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}], {"conditionsV4": ["!", "-s", "10.99.0.0/16"]}),
}


def side(make_netns, tmp_path, name: str, binary, mappings, extra, subnet6: str | None = None) -> list[str]:
    world = World(make_netns, tmp_path / name, subnet6=subnet6)
    try:
        _, path, prev = world.container("ctr1")
        if "externalSetMarkChain" in extra:  # the external chain (e.g. KUBE-MARK-MASQ) exists already
            tool = "iptables-nft" if binary.parent == REF else "iptables-legacy"
            sh(world.host, tool, "-t", "nat", "-N", extra["externalSetMarkChain"])
        conf = portmap_conf(world.name, prev, mappings, **extra)
        run = run_plugin(binary, "ADD", conf, world, "ctr1", path)
        assert run.code == 0, run.stdout + run.stderr
        tool = "iptables-nft-save" if binary.parent == REF else "iptables-legacy-save"
        lines = sorted(nat_lines(world.host, tool))
        if subnet6:
            lines += sorted("v6 " + line for line in nat_lines(world.host, tool.replace("iptables", "ip6tables")))
        assert run_plugin(binary, "DEL", conf, world, "ctr1", path).code == 0
        return lines
    finally:
        world.close()


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_nat_rules_as_reference(make_netns, tmp_path, plugin_dir, case: str) -> None:
    mappings, extra = CASES[case]
    extra = dict(extra)
    theirs = side(make_netns, tmp_path, "ref", REF / "portmap", mappings, extra)
    ours = side(make_netns, tmp_path, "ours", plugin_dir / "portmap", mappings, {**extra, "backend": "iptables"})
    assert ours == theirs


def test_dual_stack_same_rules_as_reference(make_netns, tmp_path, plugin_dir) -> None:
    mappings = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 8443, "containerPort": 443, "protocol": "tcp", "hostIP": "fd00:251::1"}]
    theirs = side(make_netns, tmp_path, "ref", REF / "portmap", mappings, {}, subnet6="fd00:250::/64")
    ours = side(make_netns, tmp_path, "ours", plugin_dir / "portmap", mappings, {"backend": "iptables"},
                subnet6="fd00:250::/64")
    assert any(line.startswith("v6 -A CNI-DN-") for line in ours)
    assert ours == theirs
