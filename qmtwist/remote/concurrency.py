"""
How many remote deliveries run at once (docs/behaviour/control.md 2.3, remote.md 11.4; FAQ 8.1).

L{Limiter} holds C{concurrencyremote} connection slots (no compile-time ceiling of 120, as
qmail's conf-spawn had); L{descriptorWarning} is the start-up / SIGHUP warning when the process
may run out of descriptors at that concurrency.
"""

from __future__ import annotations

from collections import deque

from twisted.internet import defer


def descriptorWarning(concurrencyremote: int, limit: int | None = None) -> str | None:
    """
    docs/behaviour/control.md 2.3: the warning line when the descriptor limit is below C{2*c+5}, else L{None}.

    @param limit: the soft C{RLIMIT_NOFILE} (read from the process when L{None}).
    """
    if limit is None:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return None
        limit = soft
    need = 2 * concurrencyremote + 5
    if limit < need:
        return (
            f"warning: descriptor limit {limit} is below 2*concurrencyremote+5 = {need}; "
            "expect deferrals"
        )
    return None


class Limiter:
    """At most C{limit} holders at once; the limit can change (SIGHUP)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.highest = 0
        self._waiting: deque[defer.Deferred[None]] = deque()

    def acquire(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        self._pump()
        return d

    def release(self) -> None:
        self.active -= 1
        self._pump()

    def setLimit(self, limit: int) -> None:
        self.limit = limit
        self._pump()

    def _pump(self) -> None:
        while self._waiting and self.active < self.limit:
            self.active += 1
            self.highest = max(self.highest, self.active)
            self._waiting.popleft().callback(None)
