"""
qmtwist.dkim.sign: the streamed relaxed body hash equals dkimpy's, the wire form equals what
DataEncoder sends, and signatures made from headers plus that hash verify with dkim.verify.
"""

from __future__ import annotations

import base64
import io
import os
import random

import dkim
import pytest
from dkim.canonicalization import Relaxed

from qmtwist.dkim import keys, sign
from qmtwist.remote.dataencoder import DataEncoder

BODIES = [
    b"", b"\r\n", b"\r\n\r\n", b"abc", b"abc  ", b"a \t b  \r\n\r\n\r\n", b"\r\nx\r\n",
    b"line one \r\n\tline two\t\r\n\r\n \r\nend", b" \r\n", b"x\r\n \r\n\t\r\n",
]


def randomBody(rng: random.Random) -> bytes:
    pieces = [b"a", b"b", b" ", b"\t", b"\r\n", b"\r\n\r\n", b"  \r\n", b"\xc3\xa9"]
    return b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 60)))


@pytest.mark.parametrize("body", BODIES + [randomBody(random.Random(i)) for i in range(200)])
def test_bodyHashMatchesDkimpyInAnyPieces(body: bytes) -> None:
    import hashlib

    expected = hashlib.sha256(Relaxed.canonicalize_body(body)).digest()
    whole = sign.RelaxedBodyHash()
    whole.update(body)
    assert whole.digest() == expected
    rng = random.Random(len(body))
    pieces = sign.RelaxedBodyHash()
    i = 0
    while i < len(body):
        n = rng.randrange(1, 5)
        pieces.update(body[i:i + n])
        i += n
    assert pieces.digest() == expected


def unstuff(wire: bytes) -> bytes:
    return b"".join(line[1:] if line.startswith(b".") else line
                    for line in wire.splitlines(keepends=True))


@pytest.mark.parametrize("seed", range(50))
def test_wireFormIsDataEncodersWithoutDots(seed: int, monkeypatch) -> None:
    rng = random.Random(seed)
    data = b"".join(rng.choice([b"a", b".", b"\r", b"\n", b"\r\n", b"x y"]) for _ in range(300))
    monkeypatch.setattr(sign, "CHUNK", rng.randrange(1, 8))
    enc = DataEncoder()
    wire = b""
    f = io.BytesIO(data)
    while chunk := f.read(3):
        wire += enc(chunk)
    wire += enc.flush()
    assert b"".join(sign.wireChunks(io.BytesIO(data))) == unstuff(wire)


def writeKey(home, domain: str, selector: str, type: str) -> keys.Key:
    return keys.keygen(home.control, domain, selector, type)


def dnsFor(*ks: keys.Key):
    records = {f"{k.selector}._domainkey.{k.domain}.".encode(): k.txt.encode() for k in ks}

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    return dnsfunc


MESSAGE = (b"Received: (qmail 1 invoked by uid 0); 2 Dec 2026 18:00:00 -0000\n"
           b"From: Joe <joe@mail.example.com>\nTo: friend@remote.example\nSubject: hi\n\n"
           b"hello  there \n\n.dot line\n\n\n")


@pytest.mark.parametrize("type", ["rsa", "ed25519"])
def test_signatureFromParentDomainVerifies(home, tmp_path, type: str) -> None:
    k = writeKey(home, "example.com", "s1", type)
    path = tmp_path / "m"
    path.write_bytes(MESSAGE)
    signed = sign.signFile(home.control, str(path), b"test.example", b"joe@mail.example.com", 1e9)
    assert (signed.domain, signed.selectors) == ("example.com", ("s1",))
    assert signed.prefix.startswith(b"DKIM-Signature: v=1; a=" + k.algorithm + b"; c=relaxed/relaxed;")
    assert b"\r" not in signed.prefix and signed.prefix.endswith(b"\n")
    onWire = b"".join(sign.wireChunks(io.BytesIO(signed.prefix + MESSAGE)))
    assert dkim.verify(onWire, dnsfunc=dnsFor(k))
    assert not dkim.verify(onWire.replace(b"hello", b"jello"), dnsfunc=dnsFor(k))


def test_bothKeysGiveTwoSignatures(home, tmp_path) -> None:
    r = writeKey(home, "mail.example.com", "r", "rsa")
    e = writeKey(home, "mail.example.com", "e", "ed25519")
    path = tmp_path / "m"
    path.write_bytes(MESSAGE)
    signed = sign.signFile(home.control, str(path), b"", b"x@y", 1e9)
    assert signed.selectors == ("e", "r") and signed.domain == "mail.example.com"
    onWire = b"".join(sign.wireChunks(io.BytesIO(signed.prefix + MESSAGE)))
    d = dkim.DKIM(onWire)
    assert d.verify(0, dnsfunc=dnsFor(r, e)) and d.verify(1, dnsfunc=dnsFor(r, e))
    algs = [h[1] for h in d.headers if h[0] == b"DKIM-Signature"]
    assert b"a=rsa-sha256" in algs[0] and b"a=ed25519-sha256" in algs[1]


def test_unkeyedDomainIsNotSigned(home, tmp_path) -> None:
    writeKey(home, "example.org", "s", "rsa")
    path = tmp_path / "m"
    path.write_bytes(MESSAGE)
    assert sign.signFile(home.control, str(path), b"example.org", b"joe@x", 1e9) == sign.Signed()


def test_ourBounceIsSignedForMe(home, tmp_path) -> None:
    writeKey(home, "test.example", "s", "ed25519")
    path = tmp_path / "m"
    path.write_bytes(b"From: MAILER-DAEMON@bounces.elsewhere\nTo: a@b\n\nbounce\n")
    assert sign.signFile(home.control, str(path), b"test.example", b"joe@x", 1e9) == sign.Signed()
    signed = sign.signFile(home.control, str(path), b"test.example", b"", 1e9)
    assert signed.domain == "test.example"


def test_hugeHeaderSectionGoesUnsignedWithANote(home, tmp_path) -> None:
    writeKey(home, "example.com", "s", "ed25519")
    path = tmp_path / "m"
    path.write_bytes(b"From: a@example.com\n" + b"X-Pad: " + b"y" * sign.MAX_HEADER + b"\n\nbody\n")
    signed = sign.signFile(home.control, str(path), b"", b"a@example.com", 1e9)
    assert signed == sign.Signed(note="not signed: header section over %d bytes" % sign.MAX_HEADER)


def test_unusableKeyIsASigningError(home, tmp_path) -> None:
    writeKey(home, "example.com", "s", "rsa")
    with open(os.path.join(home.control, "dkim", "example.com", "s.key"), "wb") as f:
        f.write(b"garbage")
    path = tmp_path / "m"
    path.write_bytes(MESSAGE)
    with pytest.raises(sign.SigningError) as e:
        sign.signFile(home.control, str(path), b"", b"a@b", 1e9)
    assert e.value.text.startswith("Unable to use DKIM key: ")
    assert e.value.text.endswith(". (#4.3.0)")


def test_keygenRecordAndModes(home) -> None:
    k = writeKey(home, "Example.COM", "qmtwist", "rsa")
    path = os.path.join(home.control, "dkim", "example.com", "qmtwist.key")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    assert k.record.startswith('qmtwist._domainkey.example.com. IN TXT "v=DKIM1; k=rsa; p=')
    strings = k.record.split(" IN TXT ", 1)[1]
    parts = [p.strip('"') for p in strings.split('" "')]
    assert all(len(p) <= 255 for p in parts) and "".join(parts) == k.txt
    base64.b64decode(k.public)
    with pytest.raises(keys.DKIMKeyError) as e:
        writeKey(home, "example.com", "qmtwist", "ed25519")
    assert "already exists; choose another selector with --selector" in e.value.text
    with pytest.raises(keys.DKIMKeyError):
        writeKey(home, "../etc", "s", "rsa")
    assert [(x.domain, x.selector, x.type) for x in keys.listKeys(home.control)] == [
        ("example.com", "qmtwist", "rsa")]


def test_withoutAnyKeyTheMessageIsNotRead(home, tmp_path) -> None:
    missing = str(tmp_path / "no-such-message")
    assert sign.signFile(home.control, missing, b"", b"a@b", 1e9) == sign.Signed()
    writeKey(home, "example.org", "s", "ed25519")
    with pytest.raises(OSError):
        sign.signFile(home.control, missing, b"", b"a@b", 1e9)
