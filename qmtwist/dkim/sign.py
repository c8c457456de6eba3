"""
The C{DKIM-Signature} lines for a queued message (docs/behaviour/dkim.md 18.2), with dkimpy.

Signing happens at delivery, in the remote agent, on a thread (L{signFile}): the queue file is
never rewritten and the keys are read only by the process that delivers. Memory does not grow
with the message: the file is read once in chunks; the header section is kept (at most
L{MAX_HEADER} bytes, else the message goes out unsigned, logged) and the body is canonicalized
(relaxed, RFC 6376 3.4.4, with dkimpy's own line functions) and hashed as it streams past.
Only the headers and that body hash go to dkimpy, whose C{gen_header} canonicalizes and signs
the headers exactly as its C{sign} does.

What is signed is the message as the SMTP client puts it on the wire: every line end (LF,
CR LF, a bare CR) as CR LF, the rule of L{qmtwist.remote.dataencoder.DataEncoder}, dots not
doubled.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
from typing import BinaryIO, Iterator

from attrs import frozen

import dkim
from dkim.canonicalization import (
    CanonicalizationPolicy, compress_whitespace, strip_trailing_whitespace)
from dkim.crypto import HASH_ALGORITHMS, parse_pem_private_key

from qmtwist.dkim.keys import DKIMKeyError, Key, candidates, domains, keysFor

MAX_HEADER = 256 * 1024
CHUNK = 65536
CANON = b"relaxed/relaxed"
#: envelope senders of our own bounces (single, double)
BOUNCE_SENDERS = (b"", b"#@[]")


@frozen
class Signed:
    """
    What L{signFile} decided.

    @ivar prefix: the header lines to send before the message (LF line ends), or C{b""}.
    @ivar domain: the C{d=} used, or C{""}.
    @ivar selectors: the C{s=} of each signature, e.g. C{("qmtwist",)}.
    @ivar note: why a message with a keyed domain was not signed (for the log), or C{""}.
    """

    prefix: bytes = b""
    domain: str = ""
    selectors: tuple[str, ...] = ()
    note: str = ""


class SigningError(Exception):
    """A key exists but cannot be used: the delivery defers with C{text} (qmail style)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def wireChunks(f: BinaryIO) -> Iterator[bytes]:
    """The file's bytes with every LF, CR LF and bare CR as CR LF (DataEncoder's rule)."""
    pendingCR = False
    while chunk := f.read(CHUNK):
        if pendingCR:
            chunk, pendingCR = b"\r" + chunk, False
        if chunk.endswith(b"\r"):
            chunk, pendingCR = chunk[:-1], True
        yield chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if pendingCR:
        yield b"\r\n"


class RelaxedBodyHash:
    """
    SHA-256 of the relaxed canonical body (RFC 6376 3.4.4), fed CR LF text in any pieces:
    each line through dkimpy's C{strip_trailing_whitespace} and C{compress_whitespace}; empty
    lines are held back until a non-empty line follows, so trailing ones are dropped; an empty
    body hashes as the empty string, as dkimpy's C{Relaxed.canonicalize_body} has it.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._partial = b""
        self._emptyLines = 0

    def update(self, data: bytes) -> None:
        data = self._partial + data
        end = data.rfind(b"\r\n")
        if end < 0:
            self._partial = data
            return
        self._partial = data[end + 2:]
        for line in data[:end + 2].split(b"\r\n")[:-1]:
            self._line(compress_whitespace(strip_trailing_whitespace(line + b"\r\n")))

    def _line(self, canon: bytes) -> None:
        if canon == b"\r\n":
            self._emptyLines += 1
            return
        if self._emptyLines:
            self._hash.update(b"\r\n" * self._emptyLines)
            self._emptyLines = 0
        self._hash.update(canon)

    def digest(self) -> bytes:
        if self._partial:
            self._line(compress_whitespace(self._partial) + b"\r\n")
            self._partial = b""
        return self._hash.digest()


def readHeader(chunks: Iterator[bytes]) -> tuple[bytes, bytes] | None:
    """
    Take the header section (CR LF text, the blank line excluded) from the wire-form C{chunks};
    return it and the start of the body read with it, or L{None} when the header section
    exceeds L{MAX_HEADER}. The rest of the body is what C{chunks} still yields.
    """
    head = b""
    for chunk in chunks:
        head += chunk
        # the blank line ends the headers; one at the very start means there are none
        cut = -2 if head.startswith(b"\r\n") else head.find(b"\r\n\r\n")
        if cut != -1:
            return head[:cut + 2], head[cut + 4:]
        if len(head) > MAX_HEADER:
            return None
    return (head, b"") if len(head) <= MAX_HEADER else None


def bodyHash(start: bytes, chunks: Iterator[bytes]) -> bytes:
    """The relaxed body hash of C{start} and the rest of C{chunks}."""
    body = RelaxedBodyHash()
    body.update(start)
    for chunk in chunks:
        body.update(chunk)
    return body.digest()


def fromDomain(headers: list[list[bytes]]) -> str:
    """The domain of the first address in the first From: field, lowercase; C{""} if none."""
    for name, value in headers:
        if name.lower() == b"from":
            text = value.decode("utf-8", "replace").replace("\r\n", "")
            for _display, addr in email.utils.getaddresses([text]):
                if "@" in addr:
                    return addr.rpartition("@")[2].strip().lower().rstrip(".")
            return ""
    return ""


def signature(signer: dkim.DKIM, key: Key, include: tuple[bytes, ...], digest: bytes,
              now: int) -> bytes:
    """One C{DKIM-Signature} field (CR LF folded) by dkimpy's C{gen_header}, as C{sign} makes it."""
    signer.signature_algorithm = key.algorithm
    signer.hasher = HASH_ALGORITHMS[key.algorithm]
    if key.type == "rsa":
        pk = parse_pem_private_key(key.signing)
    else:
        import nacl.encoding
        import nacl.signing

        pk = nacl.signing.SigningKey(key.signing, encoder=nacl.encoding.Base64Encoder)
    domain = key.domain.encode("ascii")
    fields = [
        (b"v", b"1"), (b"a", key.algorithm), (b"c", CANON), (b"d", domain),
        (b"i", b"@" + domain), (b"q", b"dns/txt"), (b"s", key.selector.encode("ascii")),
        (b"t", str(now).encode("ascii")), (b"h", b" : ".join(include)),
        (b"bh", base64.b64encode(digest)), (b"b", b"0" * 60),
    ]
    policy = CanonicalizationPolicy.from_c_value(CANON)
    value = signer.gen_header(fields, include, policy, b"DKIM-Signature", pk)
    return b"DKIM-Signature: " + value


def signFile(controlDir: str, path: str, me: bytes, sender: bytes, now: float) -> Signed:
    """
    Sign the queued message at C{path} for its From: domain or a parent with a key under
    C{control/dkim/}; a bounce of ours (envelope sender C{<>} or C{#@[]}) whose From: domain
    has none is signed for C{me}'s domain. Both an rsa-sha256 and an ed25519-sha256
    signature when the domain has both kinds of key. Blocking: run on a thread.

    The body is read and hashed only when the domain has a key.

    @raise SigningError: a key of the domain cannot be read or used.
    @raise OSError: the message cannot be read.
    """
    if not domains(controlDir):
        return Signed()  # no keys at all: the message is not even read
    with open(path, "rb") as f:
        chunks = wireChunks(f)
        read = readHeader(chunks)
        if read is None:
            return _unsigned(controlDir, "header section over %d bytes" % MAX_HEADER)
        head, start = read
        try:
            headers, _ = dkim.rfc822_parse(head + b"\r\n")
        except dkim.MessageFormatError as e:
            return _unsigned(controlDir, f"unparsable header section ({e})")
        author = fromDomain(headers)
        names = candidates(author) if author else []
        if sender in BOUNCE_SENDERS and me:
            names += candidates(me.decode("ascii", "replace"))
        try:
            keys = keysFor(controlDir, names)
        except DKIMKeyError as e:
            raise SigningError(f"Unable to use DKIM key: {e.text}. (#4.3.0)") from e
        if not keys:
            return Signed()
        digest = bodyHash(start, chunks)
    signer = dkim.DKIM(head + b"\r\n", linesep=b"\r\n")
    include = tuple(h.lower() for h in signer.default_sign_headers())
    if b"from" not in include:
        return _unsigned(controlDir, "no From: field")
    lines = []
    for key in sorted(keys, key=lambda k: (k.type != "rsa", k.selector)):
        try:
            lines.append(signature(signer, key, include, digest, int(now)))
        except (dkim.DKIMException, ValueError) as e:
            raise SigningError(f"Unable to sign with DKIM key {key.selector}._domainkey."
                               f"{key.domain}: {e}. (#4.3.0)") from e
    prefix = b"".join(lines).replace(b"\r\n", b"\n")
    return Signed(prefix, keys[0].domain, tuple(k.selector for k in keys))


def _unsigned(controlDir: str, why: str) -> Signed:
    """Unsigned; when any key exists, the note says why (logged by the agent)."""
    return Signed(note=f"not signed: {why}" if domains(controlDir) else "")
