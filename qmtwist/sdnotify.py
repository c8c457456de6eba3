"""
systemd's readiness protocol (sd_notify(3)) for C{Type=notify} units (docs/behaviour/operations.md
21.3): C{READY=1} once every listener is bound, C{STOPPING=1} when the stop begins.

The message is one datagram to the AF_UNIX socket named by C{$NOTIFY_SOCKET} (a path, or an
abstract name written with a leading C{@}). Without the variable nothing is sent, so the same
daemon runs unchanged outside systemd. The send never blocks: the socket is non-blocking and a
failure is logged once, never fatal.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Mapping

from twisted.application import service
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

log = Logger(namespace="qmtwist")


def notifyAddress(environ: Mapping[str, str]) -> str | bytes | None:
    """C{$NOTIFY_SOCKET} as a socket address: a path, or C{b"\\0name"} for C{@name}."""
    name = environ.get("NOTIFY_SOCKET", "")
    if not name:
        return None
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    if name.startswith("/"):
        return name
    return None  # (vsock and other families: not for a mail server)


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """
    Send C{state} (C{"READY=1"}, C{"STOPPING=1"}, C{"STATUS=..."} lines) to systemd.

    @return: whether a datagram was sent (False outside systemd).
    """
    environ = os.environ if environ is None else environ
    address = notifyAddress(environ)
    if address is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.setblocking(False)
        try:
            s.sendto(state.encode(), address)
        except OSError as e:
            log.warn("warning: unable to notify systemd at {address}: {why}",
                     address=environ.get("NOTIFY_SOCKET"), why=e.strerror or str(e))
            return False
    return True


class NotifyService(service.Service):
    """
    The last child of the daemon's service tree: once every listening service has its port
    (their start Deferreds), it sends C{READY=1} with a C{STATUS=} line; its stop, the first of
    the tree's, sends C{STOPPING=1}.

    @param top: the top service whose listening children are waited for.
    """

    def __init__(self, top: service.MultiService, environ: Mapping[str, str] | None = None
                 ) -> None:
        self.top = top
        self.environ = environ
        self.ready: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        waits = []
        for svc in self.top:
            waiting = getattr(svc, "_waitingForPort", None)  # StreamServerEndpointService's
            if isinstance(waiting, Deferred):
                waits.append(_observe(waiting))
        self.ready = gatherResults(waits, consumeErrors=True).addCallback(self._ready)
        self.ready.addErrback(lambda f: None)  # a listener that failed stopped the start

    def _ready(self, _: Any) -> None:
        if self.running:
            notify("READY=1\nSTATUS=listeners up, queue running\n", self.environ)

    def stopService(self) -> None:
        super().stopService()
        notify("STOPPING=1\nSTATUS=stopping: finishing deliveries in flight\n", self.environ)


def _observe(d: Deferred[Any]) -> Deferred[None]:
    """A Deferred that fires when C{d} does (with its failure), leaving C{d}'s result alone."""
    out: Deferred[None] = Deferred()

    def both(result: Any) -> Any:
        if isinstance(result, Exception) or hasattr(result, "raiseException"):
            out.errback(result)
        else:
            out.callback(None)
        return result

    d.addBoth(both)
    return out
