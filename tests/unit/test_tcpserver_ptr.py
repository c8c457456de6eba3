"""The listeners' PTR lookup, qmtwist/ptr.py, on a fake resolver (docs/behaviour/tcpserver.md 8.4)."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.names import dns

from qmtwist.ptr import TIMEOUT, HostLookup, makeHostLookup, reverseName


class FakeResolver:
    """PTR, A and AAAA answers from dictionaries; every query is recorded."""

    def __init__(self, ptr: dict[str, str], a: dict[str, list[str]] | None = None,
                 aaaa: dict[str, list[str]] | None = None) -> None:
        self.ptr, self.a, self.aaaa = ptr, a or {}, aaaa or {}
        self.queries: list[tuple[str, str, object]] = []

    def lookupPointer(self, name: str, timeout=None) -> Deferred:
        self.queries.append(("PTR", name, timeout))
        if name not in self.ptr:
            return fail(dns.DomainError(name))
        return succeed(([dns.RRHeader(name, dns.PTR, payload=dns.Record_PTR(self.ptr[name]))],
                        [], []))

    def lookupAddress(self, name: str, timeout=None) -> Deferred:
        self.queries.append(("A", name, timeout))
        if name not in self.a:
            return fail(dns.DomainError(name))
        return succeed(([dns.RRHeader(name, dns.A, payload=dns.Record_A(x))
                         for x in self.a[name]], [], []))

    def lookupIPV6Address(self, name: str, timeout=None) -> Deferred:
        self.queries.append(("AAAA", name, timeout))
        if name not in self.aaaa:
            return fail(dns.DomainError(name))
        return succeed(([dns.RRHeader(name, dns.AAAA, payload=dns.Record_AAAA(x))
                         for x in self.aaaa[name]], [], []))


def result(d: Deferred):
    got: list = []
    d.addBoth(got.append)
    assert len(got) == 1, "the lookup should have finished"
    return got[0]


def test_reverse_names():
    assert reverseName("10.0.0.7") == "7.0.0.10.in-addr.arpa"
    assert reverseName("::1").endswith(".ip6.arpa") and reverseName("::1").startswith("1.0.0.")
    assert reverseName("10.0.7") is None and reverseName("::zz") is None


def test_confirmed_name_is_lower_cased_without_its_dot():
    resolver = FakeResolver({"7.0.0.10.in-addr.arpa": "Mx.Example.COM."},
                            {"mx.example.com": ["10.0.0.9", "10.0.0.7"]})
    assert result(makeHostLookup(None, resolver)("10.0.0.7")) == "mx.example.com"
    assert resolver.queries == [("PTR", "7.0.0.10.in-addr.arpa", TIMEOUT),
                                ("A", "mx.example.com", TIMEOUT)]


def test_ipv6_client_is_confirmed_by_aaaa():
    ip = "2001:db8::25"
    resolver = FakeResolver({reverseName(ip): "mx6.example"}, aaaa={"mx6.example": [ip]})
    assert result(HostLookup(resolver)(ip)) == "mx6.example"
    assert [q[0] for q in resolver.queries] == ["PTR", "AAAA"]


@pytest.mark.parametrize("ptr,a", [
    ({}, {}),  # no PTR record
    ({"7.0.0.10.in-addr.arpa": "mx.example.com"}, {}),  # the name does not resolve
    ({"7.0.0.10.in-addr.arpa": "mx.example.com"}, {"mx.example.com": ["10.0.0.8"]}),  # elsewhere
    ({"7.0.0.10.in-addr.arpa": "bad_name.example"}, {"bad_name.example": ["10.0.0.7"]}),
])
def test_anything_else_gives_no_name(ptr, a):
    assert result(makeHostLookup(None, FakeResolver(ptr, a))("10.0.0.7")) is None


def test_default_resolver_is_made_at_the_first_lookup_only():
    made: list[FakeResolver] = []

    def make() -> FakeResolver:
        made.append(FakeResolver({}))
        return made[-1]

    lookup = HostLookup(make)
    assert made == []
    assert result(lookup("not an address")) is None and made == []
    lookup("10.0.0.1")
    lookup("10.0.0.2")
    assert len(made) == 1 and len(made[0].queries) == 2
