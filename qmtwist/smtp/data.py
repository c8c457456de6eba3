"""
The DATA section of an SMTP transaction, converted as it arrives (qmail-smtpd's blast();
docs/behaviour/smtp.md 7.7, 7.8).

CRLF becomes LF, a leading dot is removed, the line C{.} ends the data, a bare LF is refused;
Received/Delivered header lines are counted; bytes past databytes are dropped. The converted
bytes go straight into the queue's L{IMessageWriter}: nothing but the current partial line (at
most L{FLUSH} bytes) is kept in memory.
"""

from __future__ import annotations

from typing import Any

from qmtwist.errors import MailError
from qmtwist.smtp import replies as R

FLUSH = 65536

MORE, END, BARE_LF = "more", "end", "bare LF"

#: This many Received/Delivered header lines mean a loop (docs/behaviour/smtp.md 7.8).
MAX_HOPS = 100


class DataSection:
    """
    One message's DATA.

    @ivar hops: Received/Delivered header lines seen.
    @ivar tooBig: the stored size passed C{databytes}.
    @ivar writeError: the queue's write failure, if one happened (later bytes are dropped).
    """

    #: a line's leading dot is transparency (DATA), not data (BDAT: L{qmtwist.smtp.bdat})
    dotStuffed = True

    def __init__(self, writer: Any, databytes: int) -> None:
        self.writer = writer
        self.databytes = databytes
        self.hops = 0
        self.size = 0
        self.tooBig = False
        self.writeError: MailError | None = None
        self._midLine = False
        self._inHeader = True

    def store(self, parts: list[bytes], count: bool = True) -> None:
        """Write bytes to the queue; C{count=False} for lines the server adds (Received)."""
        if self.writeError is not None:
            return
        data = b"".join(parts)
        if count and self.databytes > 0:
            if self.tooBig:
                return
            if self.size + len(data) > self.databytes:
                self.tooBig = True
                return
        if count:
            self.size += len(data)
        try:
            self.writer.write(data)
        except MailError as e:
            self.writeError = e

    def refusal(self) -> bytes | None:
        """
        After the final dot: the reply that refuses the message, or L{None} to queue it. The
        first that applies wins: hops, then size, then the queue's write error
        (docs/behaviour/smtp.md 7.2, 7.7, 7.8).
        """
        if self.hops >= MAX_HOPS:
            return R.R_HOPS
        if self.tooBig:
            return R.R_TOOBIG
        if self.writeError is not None:
            return R.queueErrorReply(self.writeError)
        return None

    def consume(self, buf: bytearray, pos: int) -> tuple[int, str]:
        """
        Convert the complete lines of C{buf} from C{pos}.

        @return: the new position and L{MORE} (need more input), L{END} (the final dot was read)
            or L{BARE_LF}.
        """
        out: list[bytes] = []
        pending = 0
        while True:
            i = buf.find(b"\n", pos)
            if i < 0:
                if len(buf) - pos > FLUSH:
                    # a long line: write what we have, keeping a final CR for its LF
                    keep = 1 if buf[-1] == 0x0D else 0
                    part = bytes(buf[pos:len(buf) - keep])
                    if not self._midLine:
                        part = self._lineStart(part)
                    self._midLine = True
                    out.append(part)
                    pos = len(buf) - keep
                self._flush(out)
                return pos, MORE
            if i == pos or buf[i - 1] != 0x0D:
                self._flush(out)
                return pos, BARE_LF
            seg = bytes(buf[pos:i - 1])
            pos = i + 1
            if not self._midLine:
                if seg == b".":
                    self._flush(out)
                    return pos, END
                seg = self._lineStart(seg)
            self._midLine = False
            out.append(seg)
            out.append(b"\n")
            pending += len(seg) + 1
            if pending > FLUSH:
                self._flush(out)
                pending = 0

    def _flush(self, out: list[bytes]) -> None:
        if out:
            self.store(out)
            out.clear()

    def _lineStart(self, seg: bytes) -> bytes:
        if self.dotStuffed and seg.startswith(b"."):
            seg = seg[1:]
        if self._inHeader:
            if not seg:
                self._inHeader = False
            else:
                head = seg[:9].lower()
                if head.startswith(b"received") or head.startswith(b"delivered"):
                    self.hops += 1
        return seg
