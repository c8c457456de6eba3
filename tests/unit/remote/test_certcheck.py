"""Trust anchors and PKIX checks of the TLS policy (docs/behaviour/tls-policy.md 19.4)."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.defer import maybeDeferred

from qmtwist.remote import certcheck
from tests.integration.remote.tlspeers import PrivateCA


def der(cert) -> bytes:
    return cert.public_bytes(Encoding.DER)


def test_verifyChain(tmp_path) -> None:
    ca = PrivateCA()
    path = tmp_path / "tlsca"
    path.write_bytes(b"junk\n" + ca.pem)
    anchors = certcheck.loadAnchors(str(path), "control/tlsca")
    assert anchors.certs == (der(ca.cert),)
    leaf = der(ca.issue(["mx.example.net"]).cert)
    assert certcheck.verifyChain(anchors.store(), (leaf,), b"mx.example.net") is None
    assert certcheck.verifyChain(anchors.store(), (leaf,), b"mx2.example.net") == \
        "certificate does not match mx2.example.net"
    stranger = der(PrivateCA("x").issue(["mx.example.net"]).cert)
    why = certcheck.verifyChain(anchors.store(), (stranger,), b"mx.example.net")
    assert why is not None and why.startswith("certificate not trusted (")
    assert certcheck.verifyChain(anchors.store(), (), b"mx.example.net") == "no certificate"


def test_loadAnchorsRefuses(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="control/tlsca: no such file"):
        certcheck.loadAnchors(str(tmp_path / "none"), "control/tlsca")
    (tmp_path / "empty").write_bytes(b"no pem here\n")
    with pytest.raises(ValueError, match="no certificate"):
        certcheck.loadAnchors(str(tmp_path / "empty"), "control/tlsca")


@pytest_twisted.ensureDeferred
async def test_anchorCacheFollowsControlTlsca(tmp_path, monkeypatch) -> None:
    system = tmp_path / "system.pem"
    first, second = PrivateCA("system"), PrivateCA("own")
    system.write_bytes(first.pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(system))  # what OpenSSL honours for its default
    cache = certcheck.AnchorCache(str(tmp_path), maybeDeferred)
    anchors = await cache.current()
    assert (anchors.certs, anchors.source) == ((der(first.cert),), str(system))
    assert await cache.current() is anchors  # unchanged: not read again
    (tmp_path / "tlsca").write_bytes(second.pem)
    anchors = await cache.current()
    assert (anchors.certs, anchors.source) == ((der(second.cert),), "control/tlsca")
    os.unlink(tmp_path / "tlsca")
    assert (await cache.current()).certs == (der(first.cert),)
