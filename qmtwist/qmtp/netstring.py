"""QMTP's netstring framing (docs/behaviour/qmtp.md 9.1) under its old name: see L{qmtwist.netstring}."""

from qmtwist.netstring import (
    MAX_LENGTH,
    NetstringError,
    NetstringParser,
    decodeList,
    encode,
    encodeList,
)

__all__ = ["MAX_LENGTH", "NetstringError", "NetstringParser", "decodeList", "encode", "encodeList"]
