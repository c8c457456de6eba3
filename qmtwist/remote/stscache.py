"""
The MTA-STS policy cache (RFC 8461 5.1, 10.2; docs/behaviour/tls-policy.md 19.2), kept in
C{queue/lock/mtasts} so policies survive a restart: a policy seen once keeps protecting its
domain for C{max_age} seconds, even when an attacker later hides the TXT record or the HTTPS
server.

The file is JSON, one object mapping each domain to its policy C{id}, mode, C{mx} patterns,
C{max_age} and expiry time (the clock's seconds). It is read once, on a pool thread, at the
first lookup, and written behind (atomically replaced, on a pool thread, one write at a time)
after every change; the reactor thread never touches it. A missing or unreadable file is an
empty cache; write errors are logged and ignored (the cache is an optimisation of the fetch
and a defence in depth, not mail).
"""

from __future__ import annotations

import json
import os
from functools import partial
from typing import Any, Callable

from attrs import frozen
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from qmtwist.remote.mtasts import ENFORCE, NONE, TESTING, Policy

#: at most this many domains are kept; the entries that expire first go when it is exceeded
LIMIT = 10000

_log = Logger(namespace="qmail-remote")


@frozen
class Entry:
    """
    @ivar id: the C{id} of the TXT record the policy was fetched for.
    @ivar policy: the parsed policy.
    @ivar expires: clock time after which it is no longer used (fetched + max_age).
    """

    id: bytes
    policy: Policy
    expires: float


def decode(data: bytes) -> dict[bytes, Entry]:
    """The file's entries; anything malformed is left out."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}
    out: dict[bytes, Entry] = {}
    if not isinstance(raw, dict):
        return out
    for domain, e in raw.items():
        try:
            mode = str(e["mode"])
            if mode not in (ENFORCE, TESTING, NONE):
                continue
            policy = Policy(mode, tuple(str(m).encode("ascii") for m in e["mx"]),
                            int(e["max_age"]))
            out[str(domain).encode("ascii")] = Entry(str(e["id"]).encode("ascii"), policy,
                                                      float(e["expires"]))
        except (KeyError, TypeError, ValueError, UnicodeEncodeError):
            continue
    return out


def encode(entries: dict[bytes, Entry]) -> bytes:
    """The file's text for C{entries} (the inverse of L{decode})."""
    return json.dumps({
        d.decode("ascii"): {"id": e.id.decode("ascii"), "mode": e.policy.mode,
                            "mx": [m.decode("ascii") for m in e.policy.mx],
                            "max_age": e.policy.maxAge, "expires": e.expires}
        for d, e in sorted(entries.items())
    }, indent=1).encode("utf-8") + b"\n"


def readFile(path: str) -> dict[bytes, Entry]:
    """Read the cache file (blocking); missing or unreadable: empty."""
    try:
        with open(path, "rb") as f:
            return decode(f.read(4 * 1024 * 1024))
    except OSError:
        return {}


def writeFile(path: str, data: bytes) -> None:
    """Replace the cache file atomically (blocking)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class PolicyCache:
    """
    MTA-STS policies by domain, with expiry on an injected clock.

    @param path: the file (C{queue/lock/mtasts}).
    @param clock: C{IReactorTime}; expiry compares with its C{seconds()}.
    @param runInThread: runs the file read and writes off the reactor thread.
    """

    def __init__(self, path: str, clock: IReactorTime,
                 runInThread: Callable[[Callable[[], Any]], Any]) -> None:
        self.path = path
        self.clock = clock
        self.runInThread = runInThread
        self._entries: dict[bytes, Entry] | None = None
        self._loading = defer.DeferredLock()
        self._writing: defer.Deferred[None] | None = None
        self._dirty = False
        self._flushed: list[defer.Deferred[None]] = []

    async def _load(self) -> dict[bytes, Entry]:
        async with self._loading:
            if self._entries is None:
                self._entries = await self.runInThread(partial(readFile, self.path))
        assert self._entries is not None
        return self._entries

    async def get(self, domain: bytes) -> Entry | None:
        """The unexpired entry of C{domain} (lower case), or L{None}; an expired one is dropped."""
        entries = await self._load()
        entry = entries.get(domain)
        if entry is None:
            return None
        if entry.expires <= self.clock.seconds():
            del entries[domain]
            self._changed()
            return None
        return entry

    async def put(self, domain: bytes, id: bytes, policy: Policy) -> Entry:
        """Store C{policy}, fetched now for TXT C{id}; it expires after its C{max_age}."""
        entries = await self._load()
        entry = Entry(id, policy, self.clock.seconds() + policy.maxAge)
        entries[domain] = entry
        if len(entries) > LIMIT:
            for d, _e in sorted(entries.items(), key=lambda kv: kv[1].expires)[: len(entries) - LIMIT]:
                del entries[d]
        self._changed()
        return entry

    def _changed(self) -> None:
        self._dirty = True
        if self._writing is None:
            self._writeBehind()

    def _writeBehind(self) -> None:
        assert self._entries is not None
        self._dirty = False
        d: defer.Deferred[None] = defer.maybeDeferred(
            self.runInThread, partial(writeFile, self.path, encode(self._entries)))
        self._writing = d

        def done(result: Any) -> None:
            if isinstance(result, Failure):
                _log.warn("warning: unable to write {path}: {why}", path=self.path,
                          why=result.getErrorMessage())
            self._writing = None
            if self._dirty:
                self._writeBehind()
                return
            waiters, self._flushed = self._flushed, []
            for w in waiters:
                w.callback(None)

        d.addBoth(done)

    def flush(self) -> defer.Deferred[None]:
        """Fires once every change so far is on disk (or failed to get there)."""
        d: defer.Deferred[None] = defer.Deferred()
        if self._writing is None:
            d.callback(None)
        else:
            self._flushed.append(d)
        return d
