"""Firewall backends for ipMasq, portmap and the firewall plugin.

`base` (interface, errors), `iptables` (legacy x_tables via python-iptables) with
`xtregistry` (its workarounds), `nftables` (libnftables JSON via ctypes), `select`
(backend choice), `nsexec` (run in a netns), `xtnft` (removing the reference's
iptables-format rules from the iptables-nft tables on DEL/GC), and the feature modules
`masquerade`, `portmap`, `filter`. Nothing heavy is imported until a rule is touched.
"""
