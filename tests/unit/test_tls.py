"""control/servercert.pem loading (docs/behaviour/smtp.md 7.10) and client options."""

from __future__ import annotations

import os

from twisted.internet import ssl

from qmtwist.tls import ServerCertificate, clientOptions, loadServerOptions
from tests.integration.smtp.test_tls import writeCertificate


def test_missing_bad_and_changed(tmp_path, logEvents):
    path = str(tmp_path / "servercert.pem")
    cert = ServerCertificate(path)
    assert cert.options() is None
    with open(path, "wb") as f:
        f.write(b"not a pem\n")
    assert cert.options() is None
    assert any("warning: unable to load" in e.get("log_format", "") for e in logEvents)
    writeCertificate(path)
    first = cert.options()
    assert isinstance(first, ssl.CertificateOptions)
    assert cert.options() is first
    writeCertificate(path + ".new")
    os.replace(path + ".new", path)
    assert cert.options() is not first
    assert loadServerOptions(path).getContext() is not None


def test_client_options(tmp_path):
    path = str(tmp_path / "ca.pem")
    writeCertificate(path)
    assert clientOptions("test.example", path) is not None
    assert clientOptions("test.example") is not None
