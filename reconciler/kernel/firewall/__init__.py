"""Firewall backends for ipMasq, portmap and the firewall plugin.

`base` (interface, errors), `iptables` (legacy x_tables via python-iptables) with
`xtregistry` (its workarounds), `nftables` (libnftables JSON via ctypes), `select`
(backend choice), `nsexec` (run in a netns), and the feature modules `masquerade`,
`portmap`, `filter`. Nothing heavy is imported until a rule is touched.
"""
