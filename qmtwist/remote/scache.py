"""
The SMTP connection cache of remote delivery (docs/behaviour/remote.md 11.8), as Postfix's scache.

After a completed transaction (250 to the final dot) the SMTP connection is kept idle for the
next message to the same place for at most L{IDLE} seconds; a connection is not reused after
L{MAX_TIME} seconds of life or L{MAX_USES} transactions. The key is the peer address and port,
the HELO name and the TLS rule the connection was made under (L{connectionKey}), so a delivery
only takes a connection made under exactly the policy it needs: never a plaintext or less
verified one for a destination that requires TLS.

An idle connection keeps its C{concurrencyremote} slot (the limit counts connections, FAQ 8.1),
but never blocks a delivery elsewhere: when the limit is reached, the oldest idle connection is
closed (C{QUIT}) and its slot goes to the waiting delivery (L{ConnectionCache.evictOne}, the
limiter's C{onFull} hook). No C{RSET} is sent between messages: after the reply to the final dot
the transaction is complete and the peer is in its initial state (RFC 5321 4.1.1.4), so the next
C{MAIL} begins a new one; a connection whose transaction did not complete is never cached.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable

from twisted.internet.interfaces import IReactorTime

from qmtwist.remote.concurrency import Limiter

#: seconds a connection stays idle in the cache (Postfix smtp_connection_cache_time_limit)
IDLE = 2.0
#: seconds after which a connection is not reused (Postfix smtp_connection_reuse_time_limit)
MAX_TIME = 300.0
#: transactions after which a connection is not reused (Postfix smtp_connection_reuse_count_limit)
MAX_USES = 100


def connectionKey(ip: str, port: int, helohost: bytes, tlsKey: Hashable) -> tuple[Any, ...]:
    """The cache key: where the connection goes, the name we gave, and its TLS rule."""
    return (ip, port, helohost, tlsKey)


class ConnectionCache:
    """
    Idle SMTP connections by key.

    @param clock: C{IReactorTime} for the idle timers and the age of connections.
    @param limiter: the C{concurrencyremote} slots; each cached connection holds one.
    @ivar reused: transactions run on a connection taken from the cache (for tests and logs).
    """

    def __init__(self, clock: IReactorTime, limiter: Limiter, *, idle: float = IDLE,
                 maxTime: float = MAX_TIME, maxUses: int = MAX_USES) -> None:
        self.clock = clock
        self.limiter = limiter
        self.idle = idle
        self.maxTime = maxTime
        self.maxUses = maxUses
        self.reused = 0
        # (key, proto) -> idle timer, oldest first
        self._idle: OrderedDict[tuple[Any, Any], Any] = OrderedDict()
        limiter.onFull = self.evictOne

    def __len__(self) -> int:
        return len(self._idle)

    def take(self, keys: list[tuple[Any, ...]]) -> tuple[tuple[Any, ...], Any] | None:
        """
        An idle connection under one of C{keys} (tried in order), removed from the cache; its
        slot passes to the caller. A connection with unread input (say a C{421} while idle) or
        already closing is dropped instead.
        """
        for key in keys:
            for entry in list(self._idle):
                if entry[0] != key:
                    continue
                proto = entry[1]
                self._remove(entry)
                if proto.lost is None and not proto.hasPending():
                    self.reused += 1
                    return key, proto
                self._drop(proto)
        return None

    def put(self, key: tuple[Any, ...], proto: Any) -> bool:
        """
        Keep C{proto} (and the caller's slot) idle under C{key}, or hand both to a delivery
        waiting for a slot that can use it; False when it may not be kept (too old, used too
        often, closing, or a delivery elsewhere waits for a slot): then the caller closes it and
        releases its slot.
        """
        age = self.clock.seconds() - proto.createdAt
        if proto.lost is not None or proto.uses >= self.maxUses or age >= self.maxTime:
            return False
        if self.limiter.handOver(key, (key, proto)):  # a delivery waits for this very place
            self.reused += 1
            return True
        if self.limiter.waiting():
            return False
        entry = (key, proto)
        self._idle[entry] = self.clock.callLater(self.idle, self._expire, entry)
        proto.whenClosed().addCallback(lambda _: self._closedWhileIdle(entry))
        return True

    def evictOne(self) -> bool:
        """Close the oldest idle connection (QUIT) to free its slot; False when none is idle."""
        if not self._idle:
            return False
        entry = next(iter(self._idle))
        self._remove(entry)
        self._drop(entry[1])
        return True

    def closeAll(self) -> None:
        """Close every idle connection with C{QUIT} (SIGHUP, stop)."""
        while self.evictOne():
            pass

    def _expire(self, entry: tuple[Any, Any]) -> None:
        if entry in self._idle:
            del self._idle[entry]
            self._drop(entry[1])

    def _closedWhileIdle(self, entry: tuple[Any, Any]) -> None:
        """The peer closed an idle connection: forget it and free its slot."""
        if entry in self._idle:
            self._remove(entry)
            self.limiter.release()

    def _remove(self, entry: tuple[Any, Any]) -> None:
        timer = self._idle.pop(entry)
        if timer.active():
            timer.cancel()

    def _drop(self, proto: Any) -> None:
        """Close a connection no longer cached; its slot is free once it is gone (FAQ 8.1)."""
        proto.close()
        proto.whenClosed().addCallback(lambda _: self.limiter.release())
