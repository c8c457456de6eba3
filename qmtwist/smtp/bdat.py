"""
CHUNKING (RFC 3030): the C{BDAT n [LAST]} command of the SMTP server
(docs/behaviour/smtp-extensions.md 20.4).

A BDAT chunk is exactly C{n} octets after the command line: no dot-stuffing and no end marker,
so a chunk may hold C{CRLF.CRLF} anywhere and stays one message. The octets are converted by
the rule DATA uses (L{qmtwist.smtp.data}: CR LF becomes LF, a bare CR is kept, a bare LF ends the
session with qmail's 451, Received/Delivered lines are counted, databytes counts the stored
bytes) and streamed into the queue's writer as they arrive: L{ChunkSection} keeps at most the
start of the current line (L{FLUSH} bytes), never a whole chunk. The reply to a chunk comes when
its last octet has been read: C{250 2.0.0 ok N bytes} for a chunk before the last one, the
queue's reply for C{LAST}. A refused BDAT (no MAIL, no RCPT, the queue cannot start a message)
still has its chunk read and discarded, so the session stays in step with the client.
DATA in a transaction that has BDAT chunks is refused (C{503 5.5.1}) and the transaction is
dropped, as RFC 3030 section 2 leaves the state open and the client must RSET.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from qmtwist.smtp import replies as R
from qmtwist.smtp.data import BARE_LF, FLUSH, MORE, DataSection
from qmtwist.smtp.state import State, idle

if TYPE_CHECKING:
    from qmtwist.smtp.server import SMTPServer

#: A chunk size with more digits than this is a syntax error (10**18 octets is enough).
MAX_DIGITS = 18


def parseBdat(arg: bytes) -> tuple[int, bool] | None:
    """C{(size, last)} of a BDAT argument C{n} or C{n LAST} (any case), or L{None}."""
    words = arg.split()
    if not 1 <= len(words) <= 2 or not words[0].isdigit() or len(words[0]) > MAX_DIGITS:
        return None
    if len(words) == 2 and words[1].upper() != b"LAST":
        return None
    return int(words[0]), len(words) == 2


class ChunkSection(DataSection):
    """
    A message arriving in BDAT chunks: DATA's conversion without dot-stuffing or end marker.
    Line ends may straddle chunks (a CR at the end of one, its LF at the start of the next).
    """

    dotStuffed = False

    def __init__(self, writer: Any, databytes: int) -> None:
        super().__init__(writer, databytes)
        self._partial = b""

    def feed(self, data: bytes) -> str:
        """Convert the next octets of the message; L{MORE}, or L{BARE_LF} (refused)."""
        buf = self._partial + data if self._partial else data
        out: list[bytes] = []
        pos = pending = 0
        while True:
            i = buf.find(b"\n", pos)
            if i < 0:
                break
            if i == pos or buf[i - 1] != 0x0D:
                self._flush(out)
                self._partial = b""
                return BARE_LF
            seg = buf[pos:i - 1]
            pos = i + 1
            if not self._midLine:
                seg = self._lineStart(seg)
            self._midLine = False
            out += [seg, b"\n"]
            pending += len(seg) + 1
            if pending > FLUSH:
                self._flush(out)
                pending = 0
        rest = buf[pos:]
        if len(rest) > FLUSH:
            # a long line: write what we have, keeping a final CR for its LF
            keep = 1 if rest.endswith(b"\r") else 0
            part = rest[:len(rest) - keep]
            if not self._midLine:
                part = self._lineStart(part)
            self._midLine = True
            out.append(part)
            rest = rest[len(rest) - keep:]
        self._partial = rest
        self._flush(out)
        return MORE

    def finish(self) -> None:
        """After the last chunk: a final line without CR LF is stored with an LF added (as
        Postfix does), since the queue keeps whole lines; its CR, if any, is kept."""
        if self._partial or self._midLine:
            part = self._partial
            if not self._midLine:
                part = self._lineStart(part)
            self._partial = b""
            self._midLine = False
            self._flush([part, b"\n"])


class Chunking:
    """
    The BDAT command of one session: reads each chunk off the session's input buffer as it
    arrives (the session is in L{State.CHUNK} meanwhile) and answers when it is complete.

    @ivar remaining: octets of the current chunk not read yet.
    @ivar refusal: the reply for a refused BDAT whose chunk is being discarded, else L{None}.
    """

    def __init__(self, session: SMTPServer) -> None:
        self.session = session
        self.remaining = 0
        self.size = 0
        self.last = False
        self.refusal: bytes | None = None
        self._back = State.GREETED

    def command(self, arg: bytes) -> Deferred[None] | None:
        """
        C{BDAT n [LAST]}. The first chunk of a message waits for its queue file (the
        session's input is held meanwhile, L{qmtwist.smtp.server.SMTPServer._openMessage}).
        """
        s = self.session
        parsed = parseBdat(arg)
        if parsed is None:
            s._reply(R.R_BDATSYNTAX)
            return None
        self.size, self.last = parsed
        self.remaining = self.size
        self._back = s.state
        self.refusal = None
        if s.state is not State.MAIL:
            self.refusal = R.R_WANTMAIL
        elif not s.recipients:
            self.refusal = R.R_WANTRCPT
        elif s._data is None:
            return s._openMessage(ChunkSection, self._opened)
        s._enter(State.CHUNK)
        return None

    def _opened(self, ok: bool) -> None:
        if not ok:
            self.refusal = R.R_QQT
        self.session._enter(State.CHUNK)

    def step(self) -> bool:
        """Read what has arrived of the chunk; whether the session goes on processing."""
        s = self.session
        n = min(self.remaining, len(s._buf) - s._pos)
        if n:
            piece = bytes(s._buf[s._pos:s._pos + n])
            s._pos += n
            self.remaining -= n
            section = s._data
            if self.refusal is None and isinstance(section, ChunkSection):
                if section.feed(piece) == BARE_LF:
                    s._bareLF()
                    return False
        if self.remaining:
            return False
        if self.refusal is not None:
            s._enter(self._back if self._back is State.MAIL else idle(s.helo))
            s._reply(self.refusal)
            return True
        section = s._data
        assert isinstance(section, ChunkSection)
        if self.last:
            section.finish()
            s._endData()
            return True
        refusal = section.refusal()
        if refusal is not None:  # over databytes, looping, a queue write error: say so now
            s._endTransaction()
            s._reply(refusal)
            return True
        s._enter(State.MAIL)
        s._reply(b"250 2.0.0 ok %d bytes" % self.size)
        return True
