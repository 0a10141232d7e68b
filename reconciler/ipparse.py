"""IP text parsed once: `ipaddress` costs 5-20 us a call, and one ADD parses the same few
addresses a dozen times (the IPAM result, the chain's result, its cache entry, the CHECK that
verifies it). The objects are immutable, so callers share them; errors are not cached."""

from __future__ import annotations

import functools
import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

CACHE_SIZE = 4096  # distinct strings: a few per attachment


@functools.lru_cache(maxsize=CACHE_SIZE)
def interface(text: str) -> IPInterface:
    """`ipaddress.ip_interface(text)`; ValueError as it raises."""
    return ipaddress.ip_interface(text)


@functools.lru_cache(maxsize=CACHE_SIZE)
def address(text: str) -> IPAddress:
    """`ipaddress.ip_address(text)`; ValueError as it raises."""
    return ipaddress.ip_address(text)


@functools.lru_cache(maxsize=CACHE_SIZE)
def network(text: str) -> IPNetwork:
    """`ipaddress.ip_network(text, strict=False)`; ValueError as it raises."""
    return ipaddress.ip_network(text, strict=False)


@functools.lru_cache(maxsize=CACHE_SIZE)
def canonical_interface(text: str) -> str:
    """`text` as `str(ip_interface(text))` writes it (compressed IPv6, no leading zeros)."""
    return str(interface(text))


@functools.lru_cache(maxsize=CACHE_SIZE)
def canonical_address(text: str) -> str:
    return str(address(text))


@functools.lru_cache(maxsize=CACHE_SIZE)
def canonical_network(text: str) -> str:
    return str(network(text))
