"""
The bounce as an RFC 3464 delivery status notification around qmail's text
(docs/behaviour/queue.md 5.7.1).

L{reportChunks} streams a C{multipart/report; report-type=delivery-status} message: the
first part is C{text/plain} holding byte for byte the body of qmail's bounce (QSBMF: intro,
failure paragraphs, break line, Return-Path and the whole original, L{qmtwist.queue.bounce});
the second a C{message/delivery-status} with one block per failed recipient, its Status and
Diagnostic-Code read from the paragraph (L{status}, L{diagnostic}); the third the original as
C{message/rfc822} when it is at most L{FULL_COPY_MAX} bytes, else only its header section as
C{text/rfc822-headers} (Postfix's C{bounce_size_limit} rule). The original is never held in
memory: it is read in chunks three times (a scan, then each copy), on the caller's thread.
"""

from __future__ import annotations

import re
import secrets
from typing import Iterator

from attrs import frozen

from qmtwist.control import Control
from qmtwist.queue.bounce import Bounce

CHUNK = 65536
#: Postfix's bounce_size_limit default: above it the third part is the header section only
FULL_COPY_MAX = 50000
MAX_LINE = 998  # RFC 5322 2.1.1, beyond which a part is "binary"
_SAID = b"Remote host said: "
_ENHANCED = re.compile(rb"^([245])\d\d[ -]([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_OURS = re.compile(rb"\(#([245])\.(\d{1,3})\.(\d{1,3})\)")
_REPLY_LINE = re.compile(rb"^[2-5]\d\d([ -]|$)")


@frozen
class Failed:
    """One failure paragraph of C{bounce/N}: the recipient as shown and the report text."""

    recipient: bytes
    report: bytes


def parseParagraphs(paragraphs: bytes) -> list[Failed]:
    """
    The paragraphs L{qmtwist.queue.bounce.paragraph} wrote: C{<recipient>:} LF, the report
    (which never holds an empty line), an empty line.
    """
    out = []
    for para in paragraphs.split(b"\n\n"):
        first, _, report = para.partition(b"\n")
        if first.startswith(b"<") and first.endswith(b">:"):
            out.append(Failed(first[1:-2], report + b"\n" if report else b""))
    return out


def _replyLines(report: bytes) -> list[bytes]:
    """The remote reply quoted after C{Remote host said: } (its first line and continuations)."""
    lines = report.split(b"\n")
    for i, line in enumerate(lines):
        if line.startswith(_SAID):
            reply = [line[len(_SAID):]]
            reply += [x for x in _takeWhile(lines[i + 1:]) if x]
            return reply
    return []


def _takeWhile(lines: list[bytes]) -> Iterator[bytes]:
    for x in lines:
        if not _REPLY_LINE.match(x):
            return
        yield x


def status(report: bytes) -> str:
    """
    The RFC 3463 status for a failure: the enhanced code of the remote reply when it carries
    one (C{550 5.1.1 ...}), else qmail's own C{(#X.Y.Z)} (the last one in the report), else the
    class of the remote reply code (C{5.0.0}, C{4.0.0}), else C{5.0.0}.
    """
    reply = _replyLines(report)
    if reply:
        m = _ENHANCED.match(reply[0])
        if m and m.group(1) == m.group(2):
            return b".".join(m.groups()[1:]).decode()
    ours = _OURS.findall(report)
    if ours:
        return b".".join(ours[-1]).decode()
    if reply and reply[0][:1] in (b"4", b"5"):
        return reply[0][:1].decode() + ".0.0"
    return "5.0.0"


def _ascii(text: bytes) -> bytes:
    """The text as header-safe 7-bit ASCII: other bytes and controls as C{?}."""
    return bytes(c if 32 <= c < 127 or c == 9 else 63 for c in text)


def diagnostic(report: bytes) -> bytes | None:
    """C{smtp; ⟨reply⟩} from the remote reply in the report, one reply line per folded line."""
    reply = _replyLines(report)
    if not reply:
        return None
    return b"smtp; " + b"\n ".join(_ascii(x)[:900] for x in reply)


def deliveryStatus(me: bytes, failed: list[Failed]) -> bytes:
    """The C{message/delivery-status} body (RFC 3464 2.2, 2.3), LF line ends."""
    out = [b"Reporting-MTA: dns; " + _ascii(me) + b"\n"]
    for f in failed:
        block = (b"\nFinal-Recipient: rfc822; " + _ascii(f.recipient) + b"\n"
                 b"Action: failed\n"
                 b"Status: " + status(f.report).encode() + b"\n")
        diag = diagnostic(f.report)
        if diag is not None:
            block += b"Diagnostic-Code: " + diag + b"\n"
        out.append(block)
    return b"".join(out)


@frozen
class Scan:
    """What L{scan} learnt of the original: its size, header section length, widest encoding."""

    size: int
    headerLength: int
    encoding: str
    boundaryFound: bool


def _encoding(data: bytes, carry: int) -> tuple[int, int]:
    """(rank: 0 7bit, 1 8bit, 2 binary; length of the unfinished last line)."""
    rank = 0
    if any(c >= 128 for c in data):
        rank = 1
    if b"\0" in data:
        rank = 2
    lines = data.split(b"\n")
    widest = max([carry + len(lines[0])] + [len(x) for x in lines[1:]])
    if widest > MAX_LINE:
        rank = 2
    last = carry + len(lines[0]) if len(lines) == 1 else len(lines[-1])
    return rank, last


RANKS = ("7bit", "8bit", "binary")


def scan(path: str, prefix: bytes, boundary: bytes) -> Scan:
    """
    Read the original at C{path} (the copy begins with C{prefix}, the Return-Path line) in
    chunks: its size, where its header section ends, the encoding it needs, and whether the
    delimiter C{--boundary} occurs in it.
    """
    rank, carry = 0, 0
    headerLength = -1
    tail = prefix
    offset = len(prefix)  # where the next chunk starts in the copy
    found = b"--" + boundary in prefix
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            data = tail + chunk
            if headerLength < 0:
                at = data.find(b"\n\n")
                if at >= 0:
                    headerLength = offset - len(tail) + at + 1
            r, carry = _encoding(chunk, carry)
            rank = max(rank, r)
            found = found or b"--" + boundary in data
            offset += len(chunk)
            tail = data[-(len(boundary) + 4):]
    if headerLength < 0:
        headerLength = offset
    size = offset - len(prefix)
    return Scan(size, headerLength, RANKS[rank], found)


def _copy(path: str, limit: int | None = None) -> Iterator[bytes]:
    left = limit
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK if left is None else min(CHUNK, left)):
            yield chunk
            if left is not None:
                left -= len(chunk)
                if left <= 0:
                    return


def reportChunks(control: Control, bounce: Bounce, paragraphs: bytes, messPath: str,
                 now: float, n: int, qp: int) -> Iterator[bytes]:
    """
    The whole bounce as chunks (blocking reads: run on a thread).

    @param bounce: L{qmtwist.queue.bounce.makeBounce}'s result for an empty message: its
        header block, then the QSBMF text up to and including the Return-Path line.
    @param messPath: the original message file, copied in chunks.
    """
    head, _, text = bounce.message.partition(b"\n\n")
    returnPath = text[text.rfind(b"\n", 0, len(text) - 1) + 1:]  # the copy's first line
    assert returnPath.startswith(b"Return-Path: <")
    while True:
        boundary = b"=_qmtwist_" + secrets.token_hex(16).encode()
        found = scan(messPath, returnPath, boundary)
        if not found.boundaryFound and b"--" + boundary not in text + paragraphs:
            break
    full = found.size <= FULL_COPY_MAX
    textRank = max(RANKS.index(found.encoding), _encoding(text, 0)[0])
    partHead = b"Content-Type: text/plain; charset=%s\n" % (
        b"us-ascii" if textRank == 0 else b"unknown-8bit")
    if textRank:
        partHead += b"Content-Transfer-Encoding: %s\n" % RANKS[textRank].encode()
    top = head + b"\nMessage-ID: <%d.%d.%d.qmail@%s>\nMIME-Version: 1.0\n" % (
        int(now), qp, n, control.bouncehost)
    top += b'Content-Type: multipart/report; report-type=delivery-status;\n\tboundary="%s"\n' % boundary
    if textRank:
        top += b"Content-Transfer-Encoding: %s\n" % RANKS[textRank].encode()
    delim = b"\n--" + boundary + b"\n"
    yield top + b"\n" + delim[1:] + partHead + b"\n" + text
    yield from _copy(messPath)
    me = control.me or control.bouncehost
    yield (delim + b"Content-Type: message/delivery-status\n\n"
           + deliveryStatus(me, parseParagraphs(paragraphs)))
    copyRank = RANKS.index(found.encoding)
    kind = b"message/rfc822" if full else b"text/rfc822-headers"
    third = delim + b"Content-Type: " + kind + b"\n"
    if copyRank:
        third += b"Content-Transfer-Encoding: %s\n" % RANKS[copyRank].encode()
    yield third + b"\n" + returnPath
    if full:
        yield from _copy(messPath)
    else:
        yield from _copy(messPath, min(found.headerLength, FULL_COPY_MAX) - len(returnPath))
    yield b"\n--" + boundary + b"--\n"
