"""
The message body as the SMTP client puts it on the wire after C{DATA} (docs/behaviour/remote.md
11.4; RFC 5321 2.3.8 and 4.5.2): line ends as CR LF, leading dots doubled.
"""

from __future__ import annotations


class DataEncoder:
    """
    Chunk transform for the message body on the wire (RFC 5321 2.3.8 and 4.5.2).

    Every line end of the queued message -- LF, CR LF, and a bare CR -- is sent as CR LF, and a
    line that starts with C{.} gets a second one. A bare CR or a bare LF therefore never reaches
    the wire: a next hop that ends lines at a lone CR (or LF) sees exactly the lines we see, so
    C{hello<CR>.<CR><LF>MAIL FROM:...} cannot end our DATA early and start a second, forged
    transaction from our address. NUL and every other byte pass unchanged (8-bit data).
    """

    def __init__(self) -> None:
        self.atStart = True
        self.pendingCR = False

    def __call__(self, chunk: bytes) -> bytes:
        if self.pendingCR:
            chunk, self.pendingCR = b"\r" + chunk, False
        if chunk.endswith(b"\r"):
            # CR LF may be split across chunks: decide when the next byte is known.
            chunk, self.pendingCR = chunk[:-1], True
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out: list[bytes] = []
        parts = chunk.split(b"\n")
        last = len(parts) - 1
        for i, part in enumerate(parts):
            if part:
                if self.atStart and part[:1] == b".":
                    out.append(b".")
                out.append(part)
                self.atStart = False
            if i < last:
                out.append(b"\r\n")
                self.atStart = True
        return b"".join(out)

    def flush(self) -> bytes:
        """What is still held at the end of the message (a final CR, sent as a line end)."""
        if self.pendingCR:
            self.pendingCR, self.atStart = False, True
            return b"\r\n"
        return b""
