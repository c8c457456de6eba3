"""
A limit on repeated failures per client address, for password guessing (docs/behaviour/pop3.md
10.1; SMTP AUTH is meant to use the same).

L{FailureLimiter} counts failures per key (a client address, see L{addressKey}) on an injected
clock. C{failures} failures within C{window} seconds start a refusal period: while it lasts the
caller refuses the key without checking anything. Each further period for the same key is twice
as long as the one before (up to C{maxBlock}); a key without failures or refusals for C{forget}
seconds is forgotten, and with it the growth. Success does not clear anything: otherwise one known
password would let a client interleave guesses forever.

Memory is bounded: at most C{maxKeys} keys are kept; the least recently failed one is dropped
first, and stale keys are dropped as new failures arrive.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from attrs import define, field
from twisted.internet.interfaces import IReactorTime


def addressKey(ip: bytes | str) -> str:
    """
    The key a client address is limited under: an IPv4 address as it is, an IPv6 address by its
    /64 network (one site gets a whole /64, so per-address counting would not limit anybody);
    an IPv4 address mapped into IPv6 counts as the IPv4 address. Anything unparsable is used as
    it is.
    """
    text = ip.decode("ascii", "replace") if isinstance(ip, bytes) else ip
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


@define
class _Entry:
    failures: list[float] = field(factory=list)  # times within the window
    until: float = 0.0  # refused until this time
    level: int = 0  # refusal periods so far (the next one is block * 2**level)
    last: float = 0.0  # time of the last failure


class FailureLimiter:
    """
    See the module docstring.

    @param clock: C{IReactorTime} (the reactor; a L{twisted.internet.task.Clock} in tests).
    @param failures: failures within C{window} that start a refusal period.
    @param window: seconds over which failures are counted.
    @param block: the first refusal period in seconds; it doubles with each further one.
    @param maxBlock: the longest refusal period.
    @param forget: seconds after the last failure (or the end of a refusal, whichever is later)
        after which a key starts afresh; at least C{window}.
    @param maxKeys: the most keys remembered.
    """

    def __init__(self, clock: IReactorTime, failures: int = 3, window: float = 60.0,
                 block: float = 30.0, maxBlock: float = 3600.0, forget: float = 3600.0,
                 maxKeys: int = 10000) -> None:
        self.clock = clock
        self.failures = max(1, failures)
        self.window = window
        self.block = block
        self.maxBlock = maxBlock
        self.forget = max(forget, window)
        self.maxKeys = max(1, maxKeys)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def refusedFor(self, key: str) -> float:
        """Seconds C{key} is still refused; 0 when it may try."""
        entry = self._entries.get(key)
        if entry is None:
            return 0.0
        return max(0.0, entry.until - self.clock.seconds())

    def failed(self, key: str) -> float:
        """
        Record a failure for C{key}.

        @return: the length of the refusal period this failure started, or 0 when none did.
        """
        now = self.clock.seconds()
        self._prune(now)
        entry = self._entries.pop(key, None) or _Entry()
        self._entries[key] = entry  # most recent last
        entry.last = now
        entry.failures = [t for t in entry.failures if now - t < self.window]
        entry.failures.append(now)
        if len(entry.failures) < self.failures:
            return 0.0
        period = min(self.block * (2 ** min(entry.level, 32)), self.maxBlock)
        entry.level += 1
        entry.until = max(entry.until, now + period)
        entry.failures = []
        return period

    def _prune(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, entry = next(iter(entries.items()))
            if len(entries) < self.maxKeys and now - max(entry.last, entry.until) < self.forget:
                break
            del entries[key]

    def __len__(self) -> int:
        return len(self._entries)
