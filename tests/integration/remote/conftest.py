"""Fixtures of the remote delivery tests: the loopback DNS server (tests/dnsserver.py)."""

from tests.dnsserver import loopbackDNS  # noqa: F401
