"""
Netstring framing, the one implementation for every framed stream of qmtwist: the QMTP server and
client (docs/behaviour/qmtp.md 9.1), the queue socket and its client (docs/behaviour/queue.md 5.3).

A netstring is C{⟨len⟩:⟨bytes⟩,}; ⟨len⟩ is decimal without leading zeros (except C{0:,}).
L{encode} and L{encodeList} build them; L{NetstringParser} is an incremental decoder fed with
whatever the transport delivers, so a protocol can take its input apart without buffering the
whole connection; L{decodeList} splits a container netstring's content (the recipient list).
Everything is C{bytes}; nothing here touches the network.
"""

from __future__ import annotations

from typing import Callable, Iterable

#: qmail-qmtpd closes the connection on a length over this (docs/behaviour/qmtp.md 9.2).
MAX_LENGTH = 200_000_000


class NetstringError(Exception):
    """The input is not a well-formed netstring (bad length, missing C{:} or C{,}, too long)."""


def encode(data: bytes) -> bytes:
    """Frame C{data} as one netstring: C{encode(b"abc") == b"3:abc,"}."""
    return b"%d:%s," % (len(data), data)


def encodeList(items: Iterable[bytes]) -> bytes:
    """One netstring whose content is one netstring per item (QMTP's recipient list)."""
    return encode(b"".join(encode(i) for i in items))


def decodeList(content: bytes) -> list[bytes]:
    """
    Split the content of a container netstring into its netstrings.

    @raise NetstringError: a member is malformed or runs past the container.
    """
    out: list[bytes] = []
    parser = NetstringParser(out.append, maxLength=len(content))
    parser.feed(content)
    if parser.pending():
        raise NetstringError("netstring runs past its container")
    return out


class NetstringParser:
    """
    Incremental netstring decoder.

    Call L{feed} with any chunk of bytes; C{onString} is called with each complete netstring's
    content, in order. A protocol error raises L{NetstringError} from L{feed} and leaves the
    parser unusable (QMTP's answer is to close the connection).

    For large messages the content can also be streamed: when C{onChunk} is given, it receives
    the content in pieces as they arrive (C{onChunk(piece)}) and C{onString} is then called with
    C{b""} at the end of each netstring. Use L{setStreaming} to switch between the two modes at a
    netstring boundary (e.g. stream only the message netstring).
    """

    def __init__(
        self,
        onString: Callable[[bytes], None],
        maxLength: int = MAX_LENGTH,
        onChunk: Callable[[bytes], None] | None = None,
    ) -> None:
        self._onString = onString
        self._onChunk = onChunk
        self._streaming = False
        self._maxLength = maxLength
        self._buffer = b""
        self._length: int | None = None  # None: reading the length digits
        self._parts: list[bytes] = []
        self._remaining = 0
        self._broken = False

    def setStreaming(self, streaming: bool) -> None:
        """Deliver the next netstring(s) through C{onChunk} instead of whole (see class doc)."""
        self._streaming = streaming and self._onChunk is not None

    def pending(self) -> bool:
        """Whether a netstring has started but not ended."""
        return bool(self._buffer) or self._length is not None

    def feed(self, data: bytes) -> None:
        """
        Decode more input.

        @raise NetstringError: on malformed input; later calls raise it again.
        """
        if self._broken:
            raise NetstringError("parser already failed")
        try:
            self._feed(data)
        except NetstringError:
            self._broken = True
            raise

    def _feed(self, data: bytes) -> None:
        while data:
            if self._length is None:
                colon = data.find(b":")
                if colon < 0:
                    self._buffer += data
                    self._checkDigits(self._buffer)
                    return
                digits = self._buffer + data[:colon]
                data = data[colon + 1 :]
                self._buffer = b""
                self._checkDigits(digits)
                if not digits:
                    raise NetstringError("missing length")
                length = int(digits)
                if length > self._maxLength:
                    raise NetstringError("netstring too long")
                self._length = length
                self._remaining = length
                self._parts = []
                continue
            if self._remaining > 0:
                piece, data = data[: self._remaining], data[self._remaining :]
                self._remaining -= len(piece)
                if self._streaming and self._onChunk is not None:
                    self._onChunk(piece)
                else:
                    self._parts.append(piece)
                continue
            # expecting the comma
            if data[:1] != b",":
                raise NetstringError("missing comma")
            data = data[1:]
            content = b"".join(self._parts)
            self._parts = []
            self._length = None
            self._onString(content)
        return

    def _checkDigits(self, digits: bytes) -> None:
        if digits and not digits.isdigit():
            raise NetstringError("length is not made of digits")
        if len(digits) > 1 and digits[:1] == b"0":
            raise NetstringError("leading zero in length")
        if len(digits) > len(str(self._maxLength)):
            raise NetstringError("netstring too long")
