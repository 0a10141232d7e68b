"""CNI plugin implementations, one module per type.

Each module exposes `SUPPORTED_VERSIONS` and the verbs `add(args) -> Result`,
`delete(args)`, `check(args)`, and optionally `gc(args)` and `status(args)`,
where `args` is a `reconciler.cni.args.CmdArgs`. They express kernel intent
through `reconciler.kernel` and never touch netlink or iptables themselves.
"""
