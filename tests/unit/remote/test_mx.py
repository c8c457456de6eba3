"""DNS steps of qmail-remote on a scripted resolver (docs/behaviour/remote.md 11.2)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet import defer
from twisted.names import dns, error
from twisted.python.failure import Failure

from qmtwist.errors import PermanentFailure, TemporaryFailure
from qmtwist.remote.mx import (
    CNAME_SOFT,
    DNS_SOFT,
    MailHost,
    MXResolver,
    safeName,
)


def rr(name: bytes, payload: Any) -> dns.RRHeader:
    return dns.RRHeader(name, payload.TYPE, dns.IN, 0, payload)


class ScriptedResolver:
    """Answers from a table (method, name) -> list of RRHeaders or an exception class."""

    def __init__(self, table: dict[tuple[str, bytes], Any]) -> None:
        self.table = table
        self.calls: list[tuple[str, bytes, Any]] = []

    def __getattr__(self, method: str) -> Any:
        if not method.startswith("lookup"):
            raise AttributeError(method)

        def lookup(name: bytes, timeout: Any = None) -> defer.Deferred:
            self.calls.append((method, name, timeout))
            answer = self.table.get((method, name), error.DNSNameError)
            if isinstance(answer, type) and issubclass(answer, Exception):
                return defer.fail(answer(name))
            return defer.succeed((answer, [], []))

        return lookup


def run(coro: Any) -> Any:
    d = defer.ensureDeferred(coro)
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "resolver must answer synchronously here"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def test_mxSortedShuffledIPv4First() -> None:
    table = {
        ("lookupMailExchange", b"d.example"): [
            rr(b"d.example", dns.Record_MX(20, b"c.example")),
            rr(b"d.example", dns.Record_MX(10, b"a.example")),
            rr(b"d.example", dns.Record_MX(10, b"b.example")),
        ],
        ("lookupAddress", b"a.example"): [rr(b"a.example", dns.Record_A("10.0.0.1"))],
        ("lookupIPV6Address", b"a.example"): [rr(b"a.example", dns.Record_AAAA("::1"))],
        ("lookupAddress", b"b.example"): [rr(b"b.example", dns.Record_A("10.0.0.2"))],
        ("lookupIPV6Address", b"b.example"): [],
        ("lookupAddress", b"c.example"): [rr(b"c.example", dns.Record_A("10.0.0.3"))],
        ("lookupIPV6Address", b"c.example"): [],
    }
    orders = set()
    for seed in range(12):
        resolver = MXResolver(ScriptedResolver(table), rng=random.Random(seed))
        hosts = run(resolver.mailHosts(b"d.example"))
        orders.add(tuple(h.name for h in hosts))
        assert hosts[-1] == MailHost(b"c.example", 20, ("10.0.0.3",))
        assert MailHost(b"a.example", 10, ("10.0.0.1", "::1")) in hosts
    assert orders == {
        (b"a.example", b"b.example", b"c.example"),
        (b"b.example", b"a.example", b"c.example"),
    }


def test_timeoutsPassed() -> None:
    resolver = ScriptedResolver({("lookupMailExchange", b"d.example"): error.DNSServerError})
    with pytest.raises(TemporaryFailure) as e:
        run(MXResolver(resolver).mailHosts(b"d.example"))
    assert e.value.text == DNS_SOFT
    assert resolver.calls == [("lookupMailExchange", b"d.example", (1, 3, 11))]


@pytest.mark.parametrize(
    "table, exc, text",
    [
        ({("lookupMailExchange", b"d"): defer.TimeoutError}, TemporaryFailure, DNS_SOFT),
        ({}, PermanentFailure, "Sorry, I couldn't find any host named d. (#5.1.2)"),
        ({("lookupMailExchange", b"d"): [], ("lookupAddress", b"d"): error.DNSServerError,
          ("lookupIPV6Address", b"d"): []}, TemporaryFailure, DNS_SOFT),
        ({("lookupMailExchange", b"d"): [], ("lookupAddress", b"d"): [],
          ("lookupIPV6Address", b"d"): []}, PermanentFailure,
         "Sorry, I couldn't find a mail exchanger or IP address. (#5.4.4)"),
        ({("lookupMailExchange", b"d"): [rr(b"d", dns.Record_MX(10, b"m"))],
          ("lookupAddress", b"m"): defer.TimeoutError, ("lookupIPV6Address", b"m"): []},
         TemporaryFailure, DNS_SOFT),
    ],
)
def test_failures(table: dict, exc: type, text: str) -> None:
    with pytest.raises(exc) as e:
        run(MXResolver(ScriptedResolver(table)).mailHosts(b"d"))
    assert e.value.text == text


def test_refusedMXFallsBackToA() -> None:
    table = {
        ("lookupMailExchange", b"d"): error.DNSQueryRefusedError,
        ("lookupAddress", b"d"): [rr(b"d", dns.Record_A("10.0.0.9"))],
        ("lookupIPV6Address", b"d"): [],
    }
    assert run(MXResolver(ScriptedResolver(table)).mailHosts(b"d")) == [
        MailHost(b"d", 0, ("10.0.0.9",))
    ]


def test_canonical() -> None:
    table = {
        ("lookupCanonicalName", b"a"): [rr(b"a", dns.Record_CNAME(b"b"))],
        ("lookupCanonicalName", b"b"): [rr(b"b", dns.Record_CNAME(b"c"))],
        ("lookupCanonicalName", b"c"): [],
        ("lookupCanonicalName", b"loop1"): [rr(b"loop1", dns.Record_CNAME(b"loop2"))],
        ("lookupCanonicalName", b"loop2"): [rr(b"loop2", dns.Record_CNAME(b"loop1"))],
        ("lookupCanonicalName", b"evil"): [rr(b"evil", dns.Record_CNAME(b"x>\r\nDATA"))],
        ("lookupCanonicalName", b"slow"): defer.TimeoutError,
    }
    m = MXResolver(ScriptedResolver(table))
    assert run(m.canonical(b"a")) == b"c"
    assert run(m.canonical(b"c")) == b"c"
    assert run(m.canonical(b"nx")) == b"nx"
    assert run(m.canonical(b"loop1")) == b"loop1"
    assert run(m.canonical(b"evil")) == b"evil"
    with pytest.raises(TemporaryFailure) as e:
        run(m.canonical(b"slow"))
    assert e.value.text == CNAME_SOFT


def test_safeName() -> None:
    assert safeName(b"mx-1.Example_x.org.")
    assert not safeName(b"a b")
    assert not safeName(b"")
    assert not safeName(b"a/../b\x00")


def test_makeResolver() -> None:
    from twisted.internet.interfaces import IResolver
    from twisted.internet.task import Clock
    from twisted.names import client
    from zope.interface.verify import verifyObject

    from qmtwist.remote.mx import makeResolver

    given = makeResolver(Clock(), [("127.0.0.1", 5353), ("::1", 53)])
    assert isinstance(given, client.Resolver)
    assert given.servers == [("127.0.0.1", 5353), ("::1", 53)]
    assert verifyObject(IResolver, given)
    system = makeResolver(Clock(), None)
    assert isinstance(system, client.Resolver)
    assert system.resolv == "/etc/resolv.conf"
