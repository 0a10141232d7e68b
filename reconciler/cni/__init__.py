"""The CNI protocol: models, version conversion, exec entry, invocation, chains, cache.

Nothing in this package touches the kernel.
"""
