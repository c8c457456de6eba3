"""Queue file records and the qmail-queue envelope (docs/behaviour/queue.md 5.2, 5.3)."""

from __future__ import annotations

import pytest

from qmtwist.errors import QueueError
from qmtwist.queue.envelope import (
    ChannelEntry, CorruptQueueFile, Envelope, checkAddress, decodeChannel, decodeInfo,
    decodeTodo, encodeChannel, encodeInfo, encodeTodo, parseQmailQueueEnvelope)


def test_encodeTodoBytes():
    env = Envelope(b"joe@a.example", (b"x@b.example", b"y"), uid=1000, qp=4242)
    assert encodeTodo(env) == b"u1000\0p4242\0Fjoe@a.example\0Tx@b.example\0Ty\0"


def test_encodeTodoEmptySenderNoRecipients():
    assert encodeTodo(Envelope(b"", ())) == b"u0\0p0\0F\0"


def test_decodeTodoRoundTrip():
    data = b"u1000\0p4242\0Fjoe@a.example\0Tx@b.example\0Ty\0"
    assert decodeTodo(data) == Envelope(b"joe@a.example", (b"x@b.example", b"y"), 1000, 4242)
    assert encodeTodo(decodeTodo(data)) == data


def test_decodeTodoWithoutUidAndQp():
    assert decodeTodo(b"F\0Tpostmaster@x\0") == Envelope(b"", (b"postmaster@x",), 0, 0)


@pytest.mark.parametrize("data", [
    b"u0\0p0\0Fa\0Xb\0",        # unknown record type
    b"u0\0p0\0Tb\0",            # no F
    b"u0\0p0\0Fa\0Tb",          # truncated
    b"",                        # empty file: no sender
])
def test_decodeTodoCorrupt(data):
    with pytest.raises(CorruptQueueFile):
        decodeTodo(data)


def test_encodeTodoRefusesBadAddresses():
    with pytest.raises(QueueError) as e:
        encodeTodo(Envelope(b"a\nb", ()))
    assert e.value.code == 91
    with pytest.raises(QueueError) as e:
        encodeTodo(Envelope(b"a", (b"x" * 1003,)))
    assert e.value.code == 11


def test_info():
    assert encodeInfo(b"joe@a.example") == b"Fjoe@a.example\0"
    assert encodeInfo(b"") == b"F\0"
    assert decodeInfo(b"Fjoe@a.example\0") == b"joe@a.example"
    assert decodeInfo(b"F\0") == b""
    for bad in (b"Tjoe\0", b"Fjoe", b""):
        with pytest.raises(CorruptQueueFile):
            decodeInfo(bad)


def test_channelRoundTripWithOffsets():
    data = encodeChannel([b"a@x", b"bb@y", b"c"])
    assert data == b"Ta@x\0Tbb@y\0Tc\0"
    assert decodeChannel(data) == [
        ChannelEntry(0, 0, b"a@x", False),
        ChannelEntry(1, 5, b"bb@y", False),
        ChannelEntry(2, 11, b"c", False),
    ]
    marked = data[:5] + b"D" + data[6:]
    assert decodeChannel(marked)[1] == ChannelEntry(1, 5, b"bb@y", True)
    assert encodeChannel([]) == b""
    assert decodeChannel(b"") == []


@pytest.mark.parametrize("data", [b"Ta\0Xb\0", b"Ta\0Tb"])
def test_channelCorrupt(data):
    with pytest.raises(CorruptQueueFile):
        decodeChannel(data)


def test_checkAddressLimits():
    checkAddress(b"x" * 1002)
    checkAddress(b"")
    for bad, code in [(b"x" * 1003, 11), (b"x" * 5000, 11), (b"a\0b", 91), (b"a\nb", 91),
                      (b"a\rb", 91)]:
        with pytest.raises(QueueError) as e:
            checkAddress(bad)
        assert e.value.code == code


# --- parseQmailQueueEnvelope: exit codes of docs/behaviour/queue.md 5.3
# ----------------------------------------


def test_qqEnvelopeParsed():
    assert parseQmailQueueEnvelope(b"Fjoe@a\0Tx@b\0Ty@c\0\0") == (b"joe@a", [b"x@b", b"y@c"])


def test_qqEnvelopeEmptySenderNoRecipients():
    assert parseQmailQueueEnvelope(b"F\0\0") == (b"", [])


def test_qqEnvelopeLongestAddressAccepted():
    addr = b"x" * 1002
    assert parseQmailQueueEnvelope(b"F" + addr + b"\0T" + addr + b"\0\0") == (addr, [addr])


def qqCode(data: bytes) -> int:
    with pytest.raises(QueueError) as e:
        parseQmailQueueEnvelope(data)
    return e.value.code


def test_qqEnvelopeEmptyIsReadError():
    assert qqCode(b"") == 54


@pytest.mark.parametrize("data", [b"Tx@b\0\0", b"joe\0\0", b"\0\0"])
def test_qqEnvelopeWithoutFIsFormatError(data):
    assert qqCode(data) == 91


@pytest.mark.parametrize("data", [b"F", b"Fjoe@a", b"Fjoe@a\0", b"Fjoe@a\0Tx@b\0", b"Fa\0Tx"])
def test_qqEnvelopeTruncatedIsReadError(data):
    assert qqCode(data) == 54


@pytest.mark.parametrize("data", [
    b"Fa\nb\0Tx\0\0",      # newline in the sender
    b"Fa\0Tx\ny\0\0",      # newline in a recipient
    b"Fa\0Tx\ry\0\0",      # CR in a recipient
    b"Fa\0Xy\0\0",         # unknown record (what a NUL inside an address turns into)
    b"Fa\0Tx\0y\0\0",      # NUL inside a recipient: "y" is not a T record
])
def test_qqEnvelopeBadAddressIsFormatError(data):
    assert qqCode(data) == 91


@pytest.mark.parametrize("data", [
    b"F" + b"s" * 1003 + b"\0\0",
    b"Fa\0T" + b"r" * 1003 + b"\0\0",
    b"Fa\0Tok\0T" + b"r" * 4000 + b"\0\0",
])
def test_qqEnvelopeLongAddressIs11(data):
    assert qqCode(data) == 11
