"""DANE TLSA matching (RFC 7672 3.1; docs/behaviour/tls-policy.md 19.3) and the lookup's answer."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from qmtwist.remote import dane
from qmtwist.remote.dane import TLSA, Lookup
from tests.integration.remote.tlspeers import PrivateCA


@pytest.fixture(scope="module")
def chain():
    ca = PrivateCA("dane unit CA")
    issued = ca.issue(["mx.example.net"], withCA=True)
    leaf = issued.cert.public_bytes(Encoding.DER)
    return ca, leaf, ca.cert.public_bytes(Encoding.DER)


def spki(der: bytes) -> bytes:
    from cryptography import x509

    return x509.load_der_x509_certificate(der).public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("selector, matching", [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)])
def test_daneEEEverySelectorAndMatchingType(chain, selector: int, matching: int) -> None:
    _ca, leaf, _root = chain
    data = leaf if selector == 0 else spki(leaf)
    data = {0: data, 1: hashlib.sha256(data).digest(), 2: hashlib.sha512(data).digest()}[matching]
    record = TLSA(3, selector, matching, data)
    assert dane.check([record], [leaf], b"ignored.example") == (record, "")
    wrong = TLSA(3, selector, matching, bytes(len(data)))
    assert dane.check([wrong], [leaf], b"mx.example.net") == (
        None, "no TLSA record matched the certificate")


def test_daneTAChecksIssuerAndName(chain) -> None:
    _ca, leaf, root = chain
    record = TLSA(2, 1, 1, hashlib.sha256(spki(root)).digest())
    assert dane.check([record], [leaf, root], b"mx.example.net") == (record, "")
    assert dane.check([record], [leaf, root], b"other.example.net") == (
        None, "certificate does not match other.example.net")
    # the TA record must match a certificate above the leaf, not the leaf itself
    leafAsTA = TLSA(2, 1, 1, hashlib.sha256(spki(leaf)).digest())
    assert dane.check([leafAsTA], [leaf], b"mx.example.net")[0] is None


def test_daneTARefusesAChainNotIssuedByIt(chain) -> None:
    _ca, leaf, _root = chain
    other = PrivateCA("unrelated").cert.public_bytes(Encoding.DER)
    record = TLSA(2, 0, 1, hashlib.sha256(other).digest())
    match, why = dane.check([record], [leaf, other], b"mx.example.net")
    assert match is None and why.startswith("certificate does not chain to the DANE-TA")


@pytest.mark.parametrize("record, usable", [
    (TLSA(3, 1, 1, b"x"), True), (TLSA(2, 0, 2, b"x"), True),
    (TLSA(0, 1, 1, b"x"), False), (TLSA(1, 1, 1, b"x"), False),  # PKIX-*: not for SMTP
    (TLSA(3, 2, 1, b"x"), False), (TLSA(3, 1, 3, b"x"), False),
])
def test_usable(record: TLSA, usable: bool) -> None:
    assert record.usable is usable


def test_onlySecureAnswersCount() -> None:
    records = (TLSA(3, 1, 1, b"x"), TLSA(1, 1, 1, b"y"))
    assert Lookup("secure", records).usable == (TLSA(3, 1, 1, b"x"),)
    assert Lookup("insecure", records).usable == ()
    assert Lookup("soft", (), "SERVFAIL").usable == ()


def test_namesAndServers() -> None:
    assert dane.tlsaName(b"mx.example.net.") == b"_25._tcp.mx.example.net"

    class Resolver:
        servers = [("127.0.0.1", 5353)]
        dynServers = [("::1", 53)]

    assert dane.servers(Resolver()) == [("127.0.0.1", 5353), ("::1", 53)]
    assert dane.servers(object()) == [("127.0.0.1", 53)]
