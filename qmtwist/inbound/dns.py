"""
Synchronous DNS for pyspf and dkimpy, which look names up from inside their checks: they run on
a worker thread, and every lookup is handed to the daemon's twisted.names resolver (the one
L{qmtwist.plugin} builds from C{--dns}) on the reactor thread (docs/behaviour/authentication.md
22.4). The system resolver is never asked.

The worker waits for each answer on a C{threading.Event} with a timeout rather than with
C{blockingCallFromThread}, which waits for good: a worker can then never hang a reactor that
stops (the reactor joins its thread pool while it shuts down). Every lookup is bounded twice:
by the resolver's own retry timeouts (L{TIMEOUTS}) and by the deadline of the whole
verification (L{BUDGET}); a lookup past either, SERVFAIL or a refused query is a
L{DNSTempError}, which the checks turn into C{temperror}. NXDOMAIN and NODATA are empty answers.

pyspf calls its module function C{spf.DNSLookup}; importing this module replaces it with
L{spfLookup}, which asks the L{ThreadDNS} the calling thread installed with L{using} (and fails
with a temporary error in any other thread), so pyspf in this process never reaches the
system's resolver either.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any, Callable, Iterator

import spf
from twisted.internet import defer
from twisted.names import dns, error
from twisted.python.failure import Failure

#: the resolver's retry timeouts for one lookup (docs/behaviour/authentication.md 22.4)
TIMEOUTS: tuple[float, ...] = (1.0, 3.0)
#: seconds for every lookup of one message's verification together
BUDGET = 30.0

#: CNAMEs followed for one lookup
MAX_CNAME = 8

#: a pyspf answer: C{((name, type), value)}
Record = tuple[tuple[str, str], Any]

_METHODS = {
    "A": "lookupAddress", "AAAA": "lookupIPV6Address", "MX": "lookupMailExchange",
    "PTR": "lookupPointer", "TXT": "lookupText", "SPF": "lookupSenderPolicy",
    "CNAME": "lookupCanonicalName",
}
_EMPTY = (error.DNSNameError,)


class DNSTempError(Exception):
    """A lookup that got no usable answer in time (timeout, SERVFAIL, refused, stopping)."""


def _name(n: Any) -> str:
    return bytes(n.name).decode("ascii", "replace").lower().rstrip(".")


def _record(rr: Any) -> Record | None:
    """One twisted.names answer in pyspf's shape (addresses and names as text)."""
    p = rr.payload
    key = _name(rr.name)
    if rr.type == dns.A:
        return (key, "A"), p.dottedQuad()
    if rr.type == dns.AAAA:
        return (key, "AAAA"), socket.inet_ntop(socket.AF_INET6, p.address)
    if rr.type == dns.MX:
        return (key, "MX"), (p.preference, _name(p.name))
    if rr.type in (dns.PTR, dns.CNAME):
        return (key, "PTR" if rr.type == dns.PTR else "CNAME"), _name(p.name)
    if rr.type in (dns.TXT, dns.SPF):
        return (key, "TXT" if rr.type == dns.TXT else "SPF"), [bytes(s) for s in p.data]
    return None


class ThreadDNS:
    """
    Lookups for one verification, made from a worker thread.

    @param reactor: the reactor the resolver runs on.
    @param resolver: an C{IResolver} (the daemon's C{--dns} resolver).
    @param budget: seconds for all lookups together, from now.
    @param stopping: true once the daemon shuts down: later lookups fail at once.
    @ivar lookups: how many lookups were made (for the log).
    """

    def __init__(self, reactor: Any, resolver: Any, budget: float = BUDGET,
                 timeouts: tuple[float, ...] | None = None,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.deadline = time.monotonic() + budget
        self.timeouts = timeouts if timeouts is not None else TIMEOUTS
        self.stopping = stopping
        self.lookups = 0

    def _ask(self, method: str, name: str) -> Any:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DNSTempError("verification time limit reached")
        if self.stopping():
            raise DNSTempError("shutting down")
        self.lookups += 1
        done = threading.Event()
        box: list[Any] = []

        def start() -> None:
            d = defer.maybeDeferred(getattr(self.resolver, method), name, timeout=self.timeouts)

            def finished(result: Any) -> None:
                box.append(result)
                done.set()

            d.addBoth(finished)

        self.reactor.callFromThread(start)
        if not done.wait(min(sum(self.timeouts) + 1.0, remaining)):
            raise DNSTempError(f"no answer for {name} in time")
        result = box[0]
        if isinstance(result, Failure):
            if result.check(*_EMPTY):
                return None
            raise DNSTempError(f"lookup of {name} failed: {result.type.__name__}")
        return result

    def lookup(self, name: str, qtype: str, _hops: int = 0) -> list[Record]:
        """
        Records of C{qtype} at C{name} (and CNAMEs met on the way), in pyspf's shape. A
        CNAME answered without its target's records is followed (at most L{MAX_CNAME} hops).

        @raise DNSTempError: see the module docstring.
        """
        method = _METHODS.get(qtype)
        if method is None:
            return []
        result = self._ask(method, name)
        if result is None:
            return []
        out = [r for r in map(_record, result[0]) if r is not None]
        if qtype != "CNAME" and not any(kind == qtype for (_n, kind), _v in out):
            targets = [v for (owner, kind), v in out
                       if kind == "CNAME" and owner == name.lower().rstrip(".")]
            if targets and _hops < MAX_CNAME:
                out += self.lookup(targets[0], qtype, _hops + 1)
        return out

    def txt(self, name: str) -> list[bytes]:
        """The TXT records at C{name} (or at the end of its CNAME chain), each one's strings
        joined; empty for NXDOMAIN/NODATA."""
        return [b"".join(value) for (_owner, kind), value in self.lookup(name, "TXT")
                if kind == "TXT"]


_local = threading.local()


@contextlib.contextmanager
def using(resolver: ThreadDNS) -> Iterator[ThreadDNS]:
    """Make C{resolver} answer pyspf's lookups in this thread while the block runs."""
    _local.dns = resolver
    try:
        yield resolver
    finally:
        _local.dns = None


def spfLookup(name: str, qtype: str, strict: Any = True, timeout: Any = None) -> list[Record]:
    """pyspf's C{DNSLookup}: through the thread's L{ThreadDNS}; errors are C{spf.TempError}."""
    resolver: ThreadDNS | None = getattr(_local, "dns", None)
    if resolver is None:
        raise spf.TempError("DNS: no resolver for this thread")
    try:
        return resolver.lookup(name, qtype)
    except DNSTempError as e:
        raise spf.TempError(f"DNS {e}")


spf.DNSLookup = spfLookup
