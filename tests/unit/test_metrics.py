"""
L{qmtwist.metrics}: the deferral classes, and L{Metrics.stats} (what C{ctl stats} shows) against
a real scrape of the C{/metrics} page served by L{qmtwist.metricsweb.metricsSite}, over a real
queue service (the harness of tests/unit/queue/test_service.py).
"""

from __future__ import annotations

import urllib.request

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from zope.interface.verify import verifyObject

from qmtwist.delivery import Report
from qmtwist.interfaces import IDeliveryObserver, ISessionObserver
from qmtwist.metrics import Metrics, deferralReason
from qmtwist.metricsweb import metricsSite, observe
from qmtwist.remote.reports import NO_CONNECTION, connectionDied
from tests.unit.queue.test_service import makeHarness, ok


@pytest.mark.parametrize("text, reason", [
    (NO_CONNECTION.encode(), "connection"),
    (connectionDied("10.0.0.1").text, "connection"),
    (b"CNAME lookup failed temporarily. (#4.4.3)\n", "dns"),
    (b"Connected to 10.0.0.1 but sender was rejected.\nRemote host said: 451 greylisted\n",
     "remote"),
    (b"Unable to write Maildir: disk full. (#4.2.1)\n", "mailbox"),
    (b"Unexpected report from delivery agent. (#4.3.0)", "system"),
    (b"TLS required but not verified for mx at 10.0.0.1: no. (#4.7.1)\n", "security"),
    (b"Temporary error.\n", "other"),
])
def test_deferral_reason_classes(text, reason):
    assert deferralReason(text) == reason


def test_provides_the_observer_interfaces():
    m = Metrics(reactor)
    assert verifyObject(ISessionObserver, m)
    assert verifyObject(IDeliveryObserver, m)


def parse(text: str) -> dict[str, float | dict[str, float]]:
    """A scrape in the shape of L{Metrics.stats}."""
    out: dict[str, float | dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.labels:
                out[s.name] = s.value
            else:
                group = out.setdefault(s.name, {})
                assert isinstance(group, dict)
                group[",".join(f'{k}="{v}"' for k, v in s.labels.items())] = s.value
    return out


@pytest_twisted.inlineCallbacks
def test_stats_agrees_with_the_scrape(home):
    def remote(r):
        return Report.deferral(NO_CONNECTION)

    h = makeHarness(home, local=ok, remote=remote)
    metrics = Metrics(h.clock)
    observe(metrics, reactor, h.injector, h.service, [])
    h.inject(b"joe@test.example", [b"fred@test.example"])
    h.inject(b"joe@test.example", [b"fred@test.example", b"x@far.example"])
    metrics.sessionStarted("inbound", "smtp")
    metrics.sessionEnded("inbound", "smtp", True)
    h.clock.advance(30)
    port = reactor.listenTCP(0, metricsSite(metrics), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/metrics"
        text = yield deferToThread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    finally:
        yield port.stopListening()
    stats = metrics.stats()
    assert parse(text) == stats
    assert stats["qmtwist_messages_queued_total"] == 2
    assert stats["qmtwist_commit_round_messages_count"] == 2
    assert stats["qmtwist_smtp_sessions_total"] == 1
    deliveries = stats["qmtwist_deliveries_total"]
    assert isinstance(deliveries, dict)
    assert deliveries['channel="local",result="success"'] == 2
    assert deliveries['channel="remote",result="deferral"'] == 1
    assert stats["qmtwist_deferrals_total"] == {'channel="remote",reason="connection"': 1}
    assert stats["qmtwist_sessions_total"] == {
        'direction="inbound",protocol="smtp",tls="yes"': 1}
    assert stats["qmtwist_queue_messages"] == 1
    assert stats["qmtwist_queue_recipients"] == {'channel="local"': 0, 'channel="remote"': 1}
    [m] = h.service.messages.values()
    assert stats["qmtwist_queue_oldest_message_age_seconds"] == h.clock.seconds() - m.birth
