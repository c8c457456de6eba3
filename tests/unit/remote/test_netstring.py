"""Netstring framing (docs/behaviour/qmtp.md 9.1), shared by the QMTP client and server."""

from __future__ import annotations

import pytest

from qmtwist.netstring import (
    NetstringError,
    NetstringParser,
    decodeList,
    encode,
    encodeList,
)


def test_encode() -> None:
    assert encode(b"") == b"0:,"
    assert encode(b"abc") == b"3:abc,"
    assert encodeList([b"a@b", b"cd"]) == b"11:3:a@b,2:cd,,"


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_parserAnySplit(step: int) -> None:
    data = b"3:abc,0:,12:hello world!,"
    out: list[bytes] = []
    p = NetstringParser(out.append)
    for i in range(0, len(data), step):
        p.feed(data[i : i + step])
    assert out == [b"abc", b"", b"hello world!"]
    assert not p.pending()


def test_streaming() -> None:
    whole: list[bytes] = []
    chunks: list[bytes] = []
    p = NetstringParser(whole.append, onChunk=chunks.append)
    p.setStreaming(True)
    p.feed(b"5:he")
    p.feed(b"llo,")
    assert b"".join(chunks) == b"hello"
    assert whole == [b""]
    p.setStreaming(False)
    p.feed(b"2:ab,")
    assert whole == [b"", b"ab"]


@pytest.mark.parametrize(
    "data",
    [b"x:abc,", b"3:abcd", b"03:abc,", b":abc,", b"3;abc,", b"1a:", b"300000000:"],
)
def test_malformed(data: bytes) -> None:
    p = NetstringParser(lambda s: None)
    with pytest.raises(NetstringError):
        p.feed(data)
    with pytest.raises(NetstringError):
        p.feed(b"0:,")


def test_maxLength() -> None:
    p = NetstringParser(lambda s: None, maxLength=10)
    with pytest.raises(NetstringError):
        p.feed(b"11:")


def test_decodeList() -> None:
    assert decodeList(b"3:a@b,2:cd,") == [b"a@b", b"cd"]
    assert decodeList(b"") == []
    with pytest.raises(NetstringError):
        decodeList(b"5:ab,")
    with pytest.raises(NetstringError):
        decodeList(b"3:a@b")
