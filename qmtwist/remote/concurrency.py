"""
How many remote deliveries run at once (docs/behaviour/control.md 2.3, remote.md 11.4; FAQ 8.1).

L{Limiter} holds C{concurrencyremote} connection slots (no compile-time ceiling of 120, as
qmail's conf-spawn had); L{descriptorWarning} is the start-up / SIGHUP warning when the process
may run out of descriptors at that concurrency.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Hashable, Iterable

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
    """
    At most C{limit} holders at once; the limit can change (SIGHUP).

    @ivar onFull: called when an acquirer has to wait; the connection cache closes an idle
        connection there, so idle connections never block a delivery (remote.md 11.8).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.highest = 0
        self._waiting: deque[tuple[defer.Deferred[Any], frozenset[Hashable]]] = deque()
        self.onFull: Callable[[], object] | None = None

    def acquire(self, keys: Iterable[Hashable] = ()) -> defer.Deferred[Any]:
        """
        A slot: fires with L{None}, or with what L{handOver} passed to a waiter that named one
        of C{keys} (a cached connection with its slot, remote.md 11.8).
        """
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiting.append((d, frozenset(keys)))
        self._pump()
        if not d.called and self.onFull is not None:
            self.onFull()
        return d

    def handOver(self, key: Hashable, value: Any) -> bool:
        """Give a held slot, with C{value}, to the first waiter that named C{key}."""
        for entry in self._waiting:
            if key in entry[1]:
                self._waiting.remove(entry)
                entry[0].callback(value)
                return True
        return False

    def waiting(self) -> int:
        """How many acquirers wait for a slot."""
        return len(self._waiting)

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
            self._waiting.popleft()[0].callback(None)
