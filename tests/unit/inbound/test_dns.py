"""
The DNS bridge of the inbound checks (qmtwist/inbound/dns.py): lookups made on a worker thread
are answered by a twisted.names resolver on the reactor, here pointed at the loopback DNS
server (tests/dnsserver.py); failures are bounded temporary errors (docs/behaviour/authentication.md
22.4).
"""

from __future__ import annotations

import pytest
import pytest_twisted
import spf
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.names import dns

from qmtwist.inbound.dns import DNSTempError, ThreadDNS, spfLookup, using
from qmtwist.remote.mx import makeResolver
from tests.dnsserver import loopbackDNS  # noqa: F401

FAST = (0.2, 0.2)


@pytest.fixture
def zone(loopbackDNS):  # noqa: F811
    z = loopbackDNS
    z.add(b"sender.example", dns.Record_TXT(b"v=spf1 ", b"ip4:192.0.2.0/24 -all", ttl=0))
    z.cname(b"sel._domainkey.sender.example", b"key.provider.example")
    z.add(b"key.provider.example", dns.Record_TXT(b"v=DKIM1; p=abc", ttl=0))
    z.a(b"host.sender.example", "192.0.2.7")
    z.mx(b"sender.example", [(10, b"host.sender.example")])
    z.servfail(b"broken.example")
    z.silence(b"silent.example")
    return z


def bridge(zone, **kw) -> ThreadDNS:
    return ThreadDNS(reactor, makeResolver(reactor, zone.servers), timeouts=FAST, **kw)


@pytest_twisted.ensureDeferred
async def test_lookups_from_a_thread(zone):
    b = bridge(zone)
    assert await deferToThread(b.txt, "sender.example") == [b"v=spf1 ip4:192.0.2.0/24 -all"]
    # a key published through a CNAME, as DKIM providers do
    assert await deferToThread(b.txt, "sel._domainkey.sender.example") == [b"v=DKIM1; p=abc"]
    assert await deferToThread(b.lookup, "sender.example", "MX") == [
        (("sender.example", "MX"), (10, "host.sender.example"))]
    assert await deferToThread(b.lookup, "host.sender.example", "A") == [
        (("host.sender.example", "A"), "192.0.2.7")]
    assert await deferToThread(b.txt, "nowhere.example") == []  # NXDOMAIN
    assert await deferToThread(b.txt, "host.sender.example") == []  # NODATA
    assert (b"sender.example", dns.TXT) in zone.queries
    assert b.lookups == 7  # the CNAME was followed with a second query


@pytest_twisted.ensureDeferred
async def test_failures_are_temporary_and_bounded(zone):
    b = bridge(zone)
    for name in ("x.broken.example", "x.silent.example"):
        with pytest.raises(DNSTempError):
            await deferToThread(b.txt, name)
    spent = bridge(zone, budget=0)
    with pytest.raises(DNSTempError, match="time limit"):
        await deferToThread(spent.txt, "sender.example")
    stopped = bridge(zone, stopping=lambda: True)
    with pytest.raises(DNSTempError, match="shutting down"):
        await deferToThread(stopped.txt, "sender.example")
    assert stopped.lookups == spent.lookups == 0


@pytest_twisted.ensureDeferred
async def test_pyspf_asks_only_the_installed_resolver(zone):
    assert spf.DNSLookup is spfLookup
    with pytest.raises(spf.TempError):
        spfLookup("sender.example", "TXT")  # no resolver installed in this thread

    def check(ip: str) -> str:
        with using(bridge(zone)):
            return spf.query(i=ip, s="a@sender.example", h="client.example").check()[0]

    assert await deferToThread(check, "192.0.2.9") == "pass"
    assert await deferToThread(check, "198.51.100.1") == "fail"

    def silent() -> str:
        with using(bridge(zone)):
            return spf.query(i="192.0.2.9", s="a@x.silent.example", h="c.example").check()[0]

    assert await deferToThread(silent) == "temperror"
