"""
C{--metrics ENDPOINT}: Prometheus text at C{/metrics} (docs/behaviour/operations.md 21.2), and the
wiring of L{qmtwist.metrics.Metrics} to the parts it observes.

The page is prometheus_client's Twisted resource (C{MetricsResource}, a WSGI resource on the
reactor's thread pool) on the metrics' own registry, in a quiet C{twisted.web} Site: no access
log line per scrape and no "Starting factory" lines.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.twisted import MetricsResource
from twisted.application import service, strports
from twisted.web.resource import Resource
from twisted.web.server import Site

from qmtwist.metrics import Metrics


class QuietSite(Site):
    """A Site that logs neither its start nor each request (a scrape every 15 s is noise)."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


def metricsSite(metrics: Metrics) -> Site:
    """C{/metrics} serving C{metrics.registry}; every other path is 404."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(metrics.registry))
    return QuietSite(root)


def makeMetricsService(endpoint: str, metrics: Metrics) -> service.IService:
    """The listening service of C{--metrics ENDPOINT} (a strports endpoint string)."""
    svc = strports.service(endpoint, metricsSite(metrics))
    svc.setName("metrics")
    return svc


def observe(metrics: Metrics, reactor: Any, injector: Any, queue: Any,
            listeners: list[Any]) -> None:
    """
    Make C{metrics} an observer of the daemon's parts: the injector's commit rounds, the queue
    service's results and its in-memory state, each listener's sessions and remote delivery's
    connections.

    @param queue: the QueueService, or L{None} with C{--no-queue}.
    @param listeners: the listening services (L{qmtwist.tcpserver.TCPServerService}).
    """
    injector.addObserver(metrics.committed)
    if queue is not None:
        queue.deliveryObservers.append(metrics)
        metrics.watchQueue(queue, reactor.callFromThread)
        remote = queue.agents.get("remote")
        dialer = getattr(remote, "dialer", None)
        if dialer is not None:
            dialer.observers.append(metrics)
    for svc in listeners:
        svc.factory.observers.append(metrics)
