"""
The queue service's in-memory view of a message (qmail-send's job and delivery records) and
qmail-send's log quoting.
"""

from __future__ import annotations

from attrs import define, field

from qmtwist.queue.envelope import ChannelEntry


#: qmail-send's log quoting as a byte table: LF -> C{/}; outside 33-126, and C{%}, -> C{_}
_LOG_SAFE = bytes(
    0x2F if b == 10 else 0x5F if b < 33 or b > 126 or b == 37 else b for b in range(256))


def logSafe(text: bytes) -> str:
    """qmail-send's log quoting: LF becomes C{/}; bytes outside 33-126 and C{%} become C{_}."""
    return text.translate(_LOG_SAFE).decode("ascii")


@define(eq=False)
class Channel:
    name: str
    entries: list[ChannelEntry]
    scheduled: float
    recovered: bool = False
    done: set[int] = field(factory=set)
    inFlight: set[int] = field(factory=set)
    attempted: set[int] = field(factory=set)
    inPass: bool = False
    #: a pass is about to begin, waiting for the info file's mtime from a thread
    starting: bool = False
    passStart: float = 0.0
    lastPass: bool = False
    outstanding: int = 0
    deferred: bool = False
    #: the last deferral text of each recipient position (queue-control.md 17.7)
    reasons: dict[int, bytes] = field(factory=dict)

    def undone(self) -> list[ChannelEntry]:
        return [e for e in self.entries if e.position not in self.done]


@define(eq=False)
class Message:
    id: int
    sender: bytes
    birth: float
    stamp: str
    size: int
    channels: dict[str, Channel]
    finishing: bool = False
    #: C{birth} was just read from the info file (at preprocessing or recovery), so the first
    #: pass need not read it again; later passes re-read it (a touch rejuvenates, FAQ 7.3)
    birthFresh: bool = True
    #: the channels whose C{local/N} or C{remote/N} file may exist
    channelFiles: set[str] = field(factory=lambda: {"local", "remote"})
    #: found on disk at start (docs/behaviour/queue.md 5.10): which of its side files exist is
    #: not known, so its removal tries them all
    recovered: bool = False
    #: a failure paragraph was appended to C{bounce/N} by this run
    bounced: bool = False
    #: C{why/N} was written by this run
    noted: bool = False
    #: C{hold/N} may exist: this run tried to write it (C{qmtwist ctl hold}); a release does
    #: not clear it, an unlink that finds nothing is harmless
    holdTried: bool = False
    #: it has (or had) local recipients, whose forward deliveries leave records in C{fwd/}
    #: until their D marks (queue.md 5.10); a remote-only message has none to look for
    hadLocal: bool = True
