"""The whole chain with our own plugins: bridge (ipMasq) + portmap + firewall, exec'd like a runtime."""

from __future__ import annotations

import pytest

from reconciler.kernel.firewall.masquerade import chain_name
from tests.cnitest import exec_plugin
from tests.firewall.env import World, nat_lines, sh


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_bridge_portmap_firewall_chain(make_netns, tmp_path, plugin_dir, reference_plugins, backend) -> None:
    world = World(make_netns, tmp_path)
    try:
        name, path = make_netns("rcn-c-")
        sh(name, "ip", "link", "set", "lo", "up")
        bridge = {**world.bridge_conf(), "ipMasq": True, "ipMasqBackend": backend}

        def run(conf: dict, cmd: str = "ADD"):
            return exec_plugin(plugin_dir / conf["type"], cmd, conf, netns=path, container_id="ctr1",
                               cni_path=plugin_dir, netns_exec=world.host)

        res = run(bridge)
        if res.code != 0:
            pytest.skip(f"our bridge plugin is not usable here: {res.stdout[:200]}")
        prev = res.json
        pm = {"cniVersion": "1.0.0", "name": world.name, "type": "portmap", "backend": backend,
              "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
              "prevResult": prev}
        fw = {"cniVersion": "1.0.0", "name": world.name, "type": "firewall", "prevResult": prev}
        for conf in (pm, fw):
            out = run(conf)
            assert out.code == 0, out.stdout + out.stderr
        client, host_ip = world.outside_client()
        world.serve(name, 80, "chain-ok")
        world.serve(client, 7000, "PEER")
        assert world.connect(client, host_ip, 8080) == "chain-ok"
        assert world.connect(name, "10.251.0.2", 7000) == "10.251.0.1"  # masqueraded by ipMasq
        for conf in (pm, fw):
            assert run(conf, "CHECK").code == 0
        for conf in (fw, pm, bridge):
            assert run(conf, "DEL").code == 0
        leftovers = [line for line in nat_lines(world.host) if chain_name(world.name, "ctr1") in line
                     or "CNI-DN-" in line]
        assert not leftovers
        assert "ctr1" not in sh(world.host, "nft", "list", "ruleset")
    finally:
        world.close()
