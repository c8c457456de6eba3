"""
The outbound TLS policy end to end on loopback (docs/behaviour/tls-policy.md 19): MTA-STS with
the policy on a twisted.web HTTPS server and a private CA, DANE with TLSA records from the
loopback DNS server (AD bit set for secure zones), TLS SMTP sinks with good, foreign and
mismatching certificates, and L{RemoteAgent} driven with L{DeliveryRequest}s.
"""

from __future__ import annotations

import os
import re

import pytest
import pytest_twisted
from qmtwist.delivery import Outcome, Report
from tests.conftest import logLines
from tests.integration.remote.peers import SMTPSinkFactory
from tests.integration.remote.test_delivery import (
    OK, agent, control, deliverAll, message, ports, request, sinkOn)
from tests.integration.remote.tlspeers import PolicyServer, PrivateCA, policy

__all__ = ["ports"]  # the fixture

DOMAIN = b"sts.example"
MX = b"mx.sts.example"
TLS_LINE = rb"TLS: TLSv1\.[23] \S+, "


@pytest.fixture
def ca(home):
    """The private CA, trusted through control/tlsca."""
    authority = PrivateCA()
    control(home, "tlsca", authority.pem)
    return authority


@pytest.fixture
def https(ca, loopbackDNS):
    """The policy server of sts.example on 127.0.0.3, its name in the loopback DNS."""
    srv = PolicyServer(ca.issue(["mta-sts.sts.example"]))
    srv.start("127.0.0.3")
    loopbackDNS.a(b"mta-sts.sts.example", "127.0.0.3")
    yield srv
    pytest_twisted.blockon(srv.stop())


def mxSink(ports, loopbackDNS, issued=None, name: bytes = MX, ip: str = "127.0.0.2",
           port: int = 0, domain: bytes = DOMAIN, pref: int = 10):
    """A TLS SMTP sink (no STARTTLS when C{issued} is None) as an MX of C{domain}."""
    sink = SMTPSinkFactory(tlsOptions=issued.options() if issued is not None else None)
    port = sinkOn(ports, sink, ip, port)
    loopbackDNS.mx(domain, [(pref, name)])
    loopbackDNS.a(name, ip)
    return sink, port


def stsAgent(home, loopbackDNS, https, port):
    return agent(home, loopbackDNS, mxPort=port, httpsPort=https.port.getHost().port)


def publish(loopbackDNS, https, body: bytes, id: bytes = b"20261202") -> None:
    loopbackDNS.records.pop(b"_mta-sts." + DOMAIN, None)
    loopbackDNS.txt(b"_mta-sts." + DOMAIN, b"v=STSv1; id=" + id)
    https.body = body


# -- MTA-STS -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stsEnforceListedVerifiedDelivers(home, tmp_path, loopbackDNS, ports, ca, https,
                                                logEvents) -> None:
    sink, port = mxSink(ports, loopbackDNS, ca.issue(["mx.sts.example"]))
    publish(loopbackDNS, https, policy("enforce", "mx.sts.example"))
    [r] = await deliverAll(stsAgent(home, loopbackDNS, https, port),
                           [request(message(tmp_path), b"bob@sts.example")])
    assert r.outcome is Outcome.SUCCESS, r.text
    assert re.fullmatch(rb"127\.0\.0\.2 accepted message\.\n" + re.escape(OK) + TLS_LINE
                        + rb"certificate verified for mx\.sts\.example \(MTA-STS enforce\)\.\n",
                        r.text), r.text
    assert sink.messages[0].tls is True
    assert https.requests == [(b"mta-sts.sts.example", b"/.well-known/mta-sts.txt")]
    lines = logLines(logEvents)
    assert "MTA-STS: policy of sts.example id 20261202: mode enforce, max_age 86400, " \
           "mx mx.sts.example" in lines
    assert any(re.fullmatch(r"TLS to 127\.0\.0\.2 \(mx\.sts\.example\): TLSv1\.[23] \S+; "
                            r"certificate verified for mx\.sts\.example \(MTA-STS enforce\); "
                            r"peer CN=mx\.sts\.example", line) for line in lines), lines


@pytest_twisted.ensureDeferred
async def test_stsEnforceUnlistedMXDefers(home, tmp_path, loopbackDNS, ports, ca, https,
                                          logEvents) -> None:
    sink, port = mxSink(ports, loopbackDNS, ca.issue(["mx.sts.example"]))
    publish(loopbackDNS, https, policy("enforce", "*.mail.sts.example", "other.sts.example"))
    [r] = await deliverAll(stsAgent(home, loopbackDNS, https, port),
                           [request(message(tmp_path), b"bob@sts.example")])
    assert r == Report.deferral(
        "Sorry, MTA-STS policy of sts.example lists none of its MX hosts (mx.sts.example). "
        "(#4.7.5)")
    assert sink.connections == 0
    assert "MTA-STS: policy of sts.example (enforce) does not list mx.sts.example; not trying " \
           "it" in logLines(logEvents)


@pytest_twisted.ensureDeferred
async def test_stsEnforceBadCertificateDefers(home, tmp_path, loopbackDNS, ports, ca,
                                              https) -> None:
    """A certificate from a CA that is not trusted, or for another name: no message, deferral."""
    stranger = PrivateCA("a stranger")
    sink, port = mxSink(ports, loopbackDNS, stranger.issue(["mx.sts.example"]))
    publish(loopbackDNS, https, policy("enforce", "mx.sts.example"))
    a = stsAgent(home, loopbackDNS, https, port)
    [r] = await deliverAll(a, [request(message(tmp_path), b"bob@sts.example")])
    assert r.outcome is Outcome.DEFERRAL
    assert r.text.startswith(b"Sorry, MTA-STS policy of sts.example requires verified TLS to "
                             b"mx.sts.example at 127.0.0.2: certificate not trusted ("), r.text
    assert r.text.endswith(b". (#4.7.5)\nTLS: TLSv1.3 " + r.text.split(b"TLS: TLSv1.3 ")[1])
    assert sink.messages == []
    assert b"MAIL FROM:<joe@test.example>" not in sink.commands

    sink.tlsOptions = ca.issue(["someone.else"]).options()  # trusted, wrong name
    [r] = await deliverAll(a, [request(message(tmp_path), b"bob@sts.example")])
    assert r.text.startswith(b"Sorry, MTA-STS policy of sts.example requires verified TLS to "
                             b"mx.sts.example at 127.0.0.2: certificate does not match "
                             b"mx.sts.example. (#4.7.5)\n"), r.text
    assert sink.messages == []


@pytest_twisted.ensureDeferred
async def test_stsEnforceWithoutSTARTTLSDefers(home, tmp_path, loopbackDNS, ports, ca,
                                               https) -> None:
    sink, port = mxSink(ports, loopbackDNS, None)
    publish(loopbackDNS, https, policy("enforce", "mx.sts.example"))
    [r] = await deliverAll(stsAgent(home, loopbackDNS, https, port),
                           [request(message(tmp_path), b"bob@sts.example")])
    assert r == Report.deferral(
        "Sorry, MTA-STS policy of sts.example requires verified TLS to mx.sts.example at "
        "127.0.0.2: STARTTLS not offered. (#4.7.5)")
    assert sink.messages == []


@pytest_twisted.ensureDeferred
async def test_stsEnforceNextMXAfterBadCertificate(home, tmp_path, loopbackDNS, ports, ca,
                                                   https) -> None:
    """The best MX fails verification: the next listed one takes the message."""
    bad, port = mxSink(ports, loopbackDNS, PrivateCA("x").issue(["mx.sts.example"]))
    good, _ = mxSink(ports, loopbackDNS, ca.issue(["mx2.sts.example"]), name=b"mx2.sts.example",
                     ip="127.0.0.4", port=port, pref=20)
    publish(loopbackDNS, https, policy("enforce", "*.sts.example"))
    [r] = await deliverAll(stsAgent(home, loopbackDNS, https, port),
                           [request(message(tmp_path), b"bob@sts.example")])
    assert r.outcome is Outcome.SUCCESS, r.text
    assert r.text.startswith(b"127.0.0.4 accepted message.\n")
    assert (len(bad.messages), len(good.messages), bad.connections) == (0, 1, 1)


@pytest_twisted.ensureDeferred
async def test_stsTestingBadMXDeliversAndLogs(home, tmp_path, loopbackDNS, ports, ca, https,
                                              logEvents) -> None:
    sink, port = mxSink(ports, loopbackDNS, PrivateCA("x").issue(["mx.sts.example"]))
    publish(loopbackDNS, https, policy("testing", "other.sts.example"))
    [r] = await deliverAll(stsAgent(home, loopbackDNS, https, port),
                           [request(message(tmp_path), b"bob@sts.example")])
    assert r.outcome is Outcome.SUCCESS, r.text
    assert re.fullmatch(rb"127\.0\.0\.2 accepted message\.\n" + re.escape(OK) + TLS_LINE
                        + rb"certificate not verified \(MTA-STS testing\)\.\n", r.text), r.text
    assert len(sink.messages) == 1
    lines = logLines(logEvents)
    assert "MTA-STS: policy of sts.example (testing) does not list mx.sts.example; trying it " \
           "anyway" in lines
    assert any(line.startswith("MTA-STS: policy of sts.example (testing): mx.sts.example at "
                               "127.0.0.2: certificate not trusted (") and
               line.endswith("; delivering anyway") for line in lines), lines


@pytest_twisted.ensureDeferred
async def test_noTXTBehaviourUnchanged(home, tmp_path, loopbackDNS, ports, ca, https) -> None:
    """No _mta-sts record: no fetch, and the untrusted certificate is only opportunistic."""
    sink, port = mxSink(ports, loopbackDNS, PrivateCA("x").issue(["mx.sts.example"]))
    [r] = await deliverAll(stsAgent(home, loopbackDNS, https, port),
                           [request(message(tmp_path), b"bob@sts.example")])
    assert r.outcome is Outcome.SUCCESS
    assert re.fullmatch(rb"127\.0\.0\.2 accepted message\.\n" + re.escape(OK) + TLS_LINE
                        + rb"certificate not verified \(opportunistic\)\.\n", r.text), r.text
    assert https.requests == []
    assert (b"_mta-sts.sts.example", 16) in loopbackDNS.queries


@pytest_twisted.ensureDeferred
async def test_policyCachedAcrossRestartAndRefetchedOnNewId(home, tmp_path, loopbackDNS, ports,
                                                            ca, https) -> None:
    """
    The policy is kept in queue/lock/mtasts: a new agent (a restart) with the HTTPS server
    gone and the TXT record removed still enforces it; a new TXT id fetches it again.
    """
    sink, port = mxSink(ports, loopbackDNS, ca.issue(["mx.sts.example"]))
    publish(loopbackDNS, https, policy("enforce", "other.sts.example"))
    first = stsAgent(home, loopbackDNS, https, port)
    [r] = await deliverAll(first, [request(message(tmp_path), b"bob@sts.example")])
    assert r.text.startswith(b"Sorry, MTA-STS policy of sts.example lists none")
    await first.stop()
    with open(os.path.join(os.path.dirname(home.queue.tcpto), "mtasts"), "rb") as f:
        assert b'"other.sts.example"' in f.read()
    https.status = 500
    del loopbackDNS.records[b"_mta-sts." + DOMAIN]
    again = stsAgent(home, loopbackDNS, https, port)
    [r] = await deliverAll(again, [request(message(tmp_path), b"bob@sts.example")])
    assert r.text.startswith(b"Sorry, MTA-STS policy of sts.example lists none"), r.text
    assert len(https.requests) == 1 and sink.connections == 0
    # same id: the cached policy, no fetch; a new id: fetched again (now listing the MX)
    publish(loopbackDNS, https, policy("enforce", "mx.sts.example"))
    https.status = 200
    [r] = await deliverAll(again, [request(message(tmp_path), b"bob@sts.example")])
    assert r.text.startswith(b"Sorry, MTA-STS policy of sts.example lists none"), r.text
    assert len(https.requests) == 1
    publish(loopbackDNS, https, policy("enforce", "mx.sts.example"), id=b"20261203")
    [r] = await deliverAll(again, [request(message(tmp_path), b"bob@sts.example")])
    assert r.outcome is Outcome.SUCCESS, r.text
    assert len(https.requests) == 2 and len(sink.messages) == 1


@pytest_twisted.ensureDeferred
async def test_fetchFailureWithoutCacheMeansNoPolicy(home, tmp_path, loopbackDNS, ports, ca,
                                                     https, logEvents) -> None:
    """A policy server with a certificate that does not verify: no policy, delivery as before."""
    https.issued = PrivateCA("x").issue(["mta-sts.sts.example"])
    await https.stop()
    https.start("127.0.0.3")
    sink, port = mxSink(ports, loopbackDNS, None)
    publish(loopbackDNS, https, policy("enforce", "other.sts.example"))
    [r] = await deliverAll(stsAgent(home, loopbackDNS, https, port),
                           [request(message(tmp_path), b"bob@sts.example")])
    assert r == Report.success(b"127.0.0.2 accepted message.\n" + OK)
    assert any(line.startswith("MTA-STS: unable to fetch the policy of sts.example: ")
               and line.endswith("; no policy applies") for line in logLines(logEvents))


# -- DANE --------------------------------------------------------------------------------

DANE_DOMAIN = b"dane.example"
DANE_MX = b"mx.dane.example"
TLSA_NAME = b"_25._tcp.mx.dane.example"


def daneSink(ports, loopbackDNS, issued):
    return mxSink(ports, loopbackDNS, issued, name=DANE_MX, domain=DANE_DOMAIN)


@pytest_twisted.ensureDeferred
async def test_daneMatchingTLSADelivers(home, tmp_path, loopbackDNS, ports, logEvents) -> None:
    """TLSA 3 1 1 of the peer's key: delivered, though no CA vouches for the certificate."""
    issued = PrivateCA("nobody trusts me").issue(["whatever.example"])
    sink, port = daneSink(ports, loopbackDNS, issued)
    loopbackDNS.tlsa(TLSA_NAME, 3, 1, 1, issued.spkiSHA256())
    loopbackDNS.secure(b"dane.example")
    [r] = await deliverAll(agent(home, loopbackDNS, mxPort=port),
                           [request(message(tmp_path), b"bob@dane.example")])
    assert r.outcome is Outcome.SUCCESS, r.text
    assert re.fullmatch(rb"127\.0\.0\.2 accepted message\.\n" + re.escape(OK) + TLS_LINE
                        + rb"DANE-EE TLSA 3 1 1 matched for mx\.dane\.example\.\n", r.text), r.text
    assert sink.messages[0].tls is True
    assert any(re.fullmatch(r"TLS to 127\.0\.0\.2 \(mx\.dane\.example\): TLSv1\.[23] \S+; DANE-EE "
                            r"TLSA 3 1 1 matched for mx\.dane\.example; peer CN=whatever\.example",
                            line) for line in logLines(logEvents))


@pytest_twisted.ensureDeferred
async def test_daneMismatchingTLSADefers(home, tmp_path, loopbackDNS, ports) -> None:
    issued = PrivateCA().issue(["mx.dane.example"])
    sink, port = daneSink(ports, loopbackDNS, issued)
    loopbackDNS.tlsa(TLSA_NAME, 3, 1, 1, bytes(32))
    loopbackDNS.tlsa(TLSA_NAME, 1, 1, 1, issued.spkiSHA256())  # PKIX-EE: not for SMTP
    loopbackDNS.secure(b"dane.example")
    [r] = await deliverAll(agent(home, loopbackDNS, mxPort=port),
                           [request(message(tmp_path), b"bob@dane.example")])
    assert r.outcome is Outcome.DEFERRAL
    assert r.text.startswith(
        b"Sorry, DANE TLSA records of mx.dane.example require matching TLS at 127.0.0.2: no "
        b"TLSA record matched the certificate. (#4.7.5)\n"), r.text
    assert re.search(TLS_LINE + rb"DANE TLSA not matched\.\n$", r.text), r.text
    assert sink.messages == []


@pytest_twisted.ensureDeferred
async def test_daneWithoutADBitIgnored(home, tmp_path, loopbackDNS, ports) -> None:
    """Unvalidated TLSA records (no AD bit) do not count: opportunistic TLS as before."""
    sink, port = daneSink(ports, loopbackDNS, PrivateCA().issue(["mx.dane.example"]))
    loopbackDNS.tlsa(TLSA_NAME, 3, 1, 1, bytes(32))
    [r] = await deliverAll(agent(home, loopbackDNS, mxPort=port),
                           [request(message(tmp_path), b"bob@dane.example")])
    assert r.outcome is Outcome.SUCCESS, r.text
    assert r.text.endswith(b"certificate not verified (opportunistic).\n")


@pytest_twisted.ensureDeferred
async def test_daneTAMatchesTheIssuer(home, tmp_path, loopbackDNS, ports) -> None:
    """TLSA 2 0 1 of the CA certificate sent in the chain; the leaf must name the MX host."""
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding

    authority = PrivateCA("a DANE-TA")
    sink, port = daneSink(ports, loopbackDNS, authority.issue(["mx.dane.example"], withCA=True))
    loopbackDNS.tlsa(TLSA_NAME, 2, 0, 1,
                     hashlib.sha256(authority.cert.public_bytes(Encoding.DER)).digest())
    loopbackDNS.secure(b"dane.example")
    a = agent(home, loopbackDNS, mxPort=port)
    [r] = await deliverAll(a, [request(message(tmp_path), b"bob@dane.example")])
    assert r.outcome is Outcome.SUCCESS, r.text
    assert r.text.endswith(b"DANE-TA TLSA 2 0 1 matched for mx.dane.example.\n"), r.text
    sink.tlsOptions = authority.issue(["another.example"], withCA=True).options()
    a.scache.closeAll()  # the verified connection would be reused (remote.md 11.8)
    [r] = await deliverAll(a, [request(message(tmp_path), b"bob@dane.example")])
    assert r.text.startswith(b"Sorry, DANE TLSA records of mx.dane.example require matching "
                             b"TLS at 127.0.0.2: certificate does not match mx.dane.example."), r.text


@pytest_twisted.ensureDeferred
async def test_daneTakesPrecedenceOverSTS(home, tmp_path, loopbackDNS, ports, ca, https) -> None:
    """RFC 8461 2: with usable TLSA records, DANE decides; MTA-STS enforce is not applied."""
    issued = PrivateCA("not the tlsca").issue(["mx.sts.example"])
    sink, port = mxSink(ports, loopbackDNS, issued)
    publish(loopbackDNS, https, policy("enforce", "mx.sts.example"))
    loopbackDNS.tlsa(b"_25._tcp.mx.sts.example", 3, 1, 1, issued.spkiSHA256())
    loopbackDNS.secure(b"mx.sts.example")
    [r] = await deliverAll(stsAgent(home, loopbackDNS, https, port),
                           [request(message(tmp_path), b"bob@sts.example")])
    assert r.outcome is Outcome.SUCCESS, r.text
    assert r.text.endswith(b"DANE-EE TLSA 3 1 1 matched for mx.sts.example.\n"), r.text


@pytest_twisted.ensureDeferred
async def test_daneLookupFailureSkipsHost(home, tmp_path, loopbackDNS, ports) -> None:
    """SERVFAIL for the TLSA name (what a validating resolver says for bogus data): deferral."""
    sink, port = daneSink(ports, loopbackDNS, PrivateCA().issue(["mx.dane.example"]))
    loopbackDNS.servfail(TLSA_NAME)
    [r] = await deliverAll(agent(home, loopbackDNS, mxPort=port, dnsTimeout=(0.3,)),
                           [request(message(tmp_path), b"bob@dane.example")])
    assert r == Report.deferral("Sorry, the TLSA lookup for _25._tcp.mx.dane.example failed "
                                "temporarily (SERVFAIL). (#4.4.3)")
    assert sink.connections == 0
