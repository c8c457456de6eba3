"""
The daemon's figures for Prometheus and for C{qmtwist ctl stats} (docs/behaviour/operations.md 21.2).

L{Metrics} owns its own C{CollectorRegistry} (never prometheus_client's global one, so two
daemons in one test process, or a library that registers its own figures, never mix). It learns
everything by observing: it is a commit observer of the injector (L{committed}), an
L{IDeliveryObserver} of the queue service and an L{ISessionObserver} of every listener and of
remote delivery's dialer; L{qmtwist.metricsweb.observe} wires it. The queue gauges are read at
collection time from the queue service's in-memory schedule (L{QueueCollector}), on the reactor
thread, never from the queue directories.

Every method here runs on the reactor thread except a scrape: C{MetricsResource} renders on the
reactor's thread pool, and L{QueueCollector} then hops to the reactor thread for its sample.
"""

from __future__ import annotations

import queue
import re
from typing import Any, Callable, Iterable

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorTime
from twisted.python import threadable
from zope.interface import implementer

from qmtwist.delivery import Outcome
from qmtwist.interfaces import IDeliveryObserver, ISessionObserver

# A counter's figures are C{NAME_total}; the C{NAME_created} timestamps only add noise here.
prometheus_client.disable_created_metrics()

ROUND_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400,
                   7 * 86400)

_STATUS = re.compile(rb"\(#4\.(\d)\.\d{1,3}\)")
#: RFC 3463's subjects, for the deferral classes
_SUBJECTS = {b"1": "address", b"2": "mailbox", b"3": "system", b"5": "protocol",
             b"6": "content", b"7": "security"}

Figures = dict[str, "float | dict[str, float]"]


def deferralReason(text: bytes) -> str:
    """
    The class of a deferral, from its report text (docs/behaviour/operations.md 21.2.2):
    C{remote} when a remote host answered 4xx (C{Remote host said:}), C{dns} for C{#4.4.3},
    C{connection} for C{#4.4.1} and C{#4.4.2}, else RFC 3463's subject of its C{(#4.x.y)} code
    (C{address}, C{mailbox}, C{system}, C{protocol}, C{content}, C{security}), else C{other}.
    """
    if b"Remote host said:" in text:
        return "remote"
    m = _STATUS.search(text)
    if m is None:
        return "other"
    if m.group(1) == b"4":
        return "dns" if m.group(0).startswith(b"(#4.4.3") else "connection"
    return _SUBJECTS.get(m.group(1), "other")


class QueueCollector(Collector):
    """
    The queue gauges, from the queue service's in-memory state at collection time.

    @param queue: the L{qmtwist.queue.service.QueueService}, or L{None} (C{--no-queue}: no
        gauges).
    @param clock: for the age of the oldest message.
    @param callFromThread: the reactor's C{callFromThread}: a scrape on the thread pool hands
        the sample to the reactor thread and waits for it, at most L{WAIT} seconds (a reactor
        that is shutting down may never run it; the scrape then has no queue gauges).
    """

    WAIT = 10.0

    def __init__(self, queue: Any, clock: IReactorTime,
                 callFromThread: Callable[..., Any]) -> None:
        self.queue = queue
        self.clock = clock
        self.callFromThread = callFromThread

    def describe(self) -> Iterable[Any]:
        """The names, without values (what the registry asks at registration)."""
        return self._families()

    def collect(self) -> Iterable[Any]:
        if self.queue is None:
            return []
        if threadable.isInIOThread():
            return self.sample()
        answer: queue.Queue[list[Any]] = queue.Queue(1)

        def onReactor() -> None:
            try:
                answer.put(self.sample())
            except Exception:
                answer.put([])
                raise

        self.callFromThread(onReactor)
        try:
            return answer.get(timeout=self.WAIT)
        except queue.Empty:
            return []

    def _families(self) -> list[Any]:
        return [
            GaugeMetricFamily("qmtwist_queue_messages",
                              "Messages in the queue (preprocessed, not yet finished)."),
            GaugeMetricFamily("qmtwist_queue_recipients",
                              "Recipients not yet delivered, by channel.", labels=["channel"]),
            GaugeMetricFamily("qmtwist_queue_oldest_message_age_seconds",
                              "Age of the oldest message in the queue (0 when empty)."),
            GaugeMetricFamily("qmtwist_deliveries_in_flight",
                              "Deliveries running now, by channel.", labels=["channel"]),
        ]

    def sample(self) -> list[Any]:
        """The gauges as they are now (reactor thread: it walks the service's dicts)."""
        q = self.queue
        families = self._families()
        messages, recipients, oldest, inFlight = families
        waiting = {"local": 0, "remote": 0}
        births = []
        for m in list(q.messages.values()):
            births.append(m.birth)
            for name, ch in m.channels.items():
                waiting[name] = waiting.get(name, 0) + len(ch.entries) - len(ch.done)
        messages.add_metric([], len(births))
        for name in sorted(waiting):
            recipients.add_metric([name], waiting[name])
        oldest.add_metric([], max(0.0, self.clock.seconds() - min(births)) if births else 0.0)
        for name in sorted(q.active):
            inFlight.add_metric([name], q.active[name])
        return families


@implementer(IDeliveryObserver, ISessionObserver)
class Metrics:
    """
    The figures of one daemon (names and meanings: docs/behaviour/operations.md 21.2.1).

    @param clock: for delivery latencies.
    @ivar registry: the registry a scrape serves and L{stats} reads.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queued = Counter("qmtwist_messages_queued", "Messages committed to the queue by "
                              "this daemon (SMTP, QMTP, the queue socket, bounces, forwards).",
                              registry=r)
        self.rounds = Histogram("qmtwist_commit_round_messages",
                                "Messages made durable together in one commit round.",
                                buckets=ROUND_BUCKETS, registry=r)
        self.deliveries = Counter("qmtwist_deliveries", "Delivery results.",
                                  ["channel", "result"], registry=r)
        self.deferrals = Counter("qmtwist_deferrals", "Deferrals by reason class.",
                                 ["channel", "reason"], registry=r)
        self.latency = Histogram("qmtwist_delivery_latency_seconds",
                                 "From the message's arrival in the queue to a recipient's "
                                 "success or failure.", ["channel"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.smtpSessions = Counter("qmtwist_smtp_sessions",
                                    "SMTP sessions the rules allowed.", registry=r)
        self.sessions = Counter("qmtwist_sessions", "Sessions ended, with or without TLS.",
                                ["direction", "protocol", "tls"], registry=r)
        for channel in ("local", "remote"):
            for result in Outcome:
                self.deliveries.labels(channel, result.value)
        self.queueCollector: QueueCollector | None = None

    def watchQueue(self, queue: Any, callFromThread: Callable[..., Any]) -> None:
        """Add the queue gauges of C{queue} (a QueueService) to the registry."""
        self.queueCollector = QueueCollector(queue, self.clock, callFromThread)
        self.registry.register(self.queueCollector)

    # -- observers ---------------------------------------------------------------------------

    def committed(self, ids: list[int]) -> None:
        """The injector's commit observer: one round made C{ids} durable."""
        self.queued.inc(len(ids))
        self.rounds.observe(len(ids))

    def delivered(self, channel: str, outcome: object, text: bytes, birth: float) -> None:
        assert isinstance(outcome, Outcome)
        self.deliveries.labels(channel, outcome.value).inc()
        if outcome is Outcome.DEFERRAL:
            self.deferrals.labels(channel, deferralReason(text)).inc()
        else:
            self.latency.labels(channel).observe(max(0.0, self.clock.seconds() - birth))

    def sessionStarted(self, direction: str, protocol: str) -> None:
        if direction == "inbound" and protocol == "smtp":
            self.smtpSessions.inc()

    def sessionEnded(self, direction: str, protocol: str, tls: bool) -> None:
        self.sessions.labels(direction, protocol, "yes" if tls else "no").inc()

    # -- for ctl stats -----------------------------------------------------------------------

    def stats(self) -> Figures:
        """
        Every sample a scrape shows, by sample name: a figure without labels is a float; one
        with labels is a dict from its label text as in the scrape (C{channel="local",
        result="success"}) to the float. Histograms give C{NAME_bucket} (with C{le}),
        C{NAME_count} and C{NAME_sum}. Call on the reactor thread.
        """
        out: Figures = {}
        for family in self.registry.collect():
            for s in family.samples:
                if not s.labels:
                    out[s.name] = float(s.value)
                    continue
                labels = ",".join(f'{k}="{v}"' for k, v in s.labels.items())
                group = out.setdefault(s.name, {})
                assert isinstance(group, dict)
                group[labels] = float(s.value)
        return out
