"""control/servercert.pem loading (docs/behaviour/smtp.md 7.10) and client options."""

from __future__ import annotations

import os

import pytest
from twisted.internet import ssl

from qmtwist.tls import KeyMismatch, ServerCertificate, clientOptions, loadServerOptions
from tests.conftest import logLines
from tests.integration.smtp.test_tls import (
    MISMATCH, writeCertificate, writeMismatchedCertificate)


def test_missing_bad_and_changed(tmp_path, logEvents):
    path = str(tmp_path / "servercert.pem")
    cert = ServerCertificate(path)
    assert cert.options() is None
    with open(path, "wb") as f:
        f.write(b"not a pem\n")
    assert cert.options() is None
    assert any(line.startswith(f"warning: unable to load {path}: ") for line in logLines(logEvents))
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


def test_mismatched_key_is_refused_once(tmp_path, logEvents):
    """OpenSSL would find it only at the first handshake, after STARTTLS was offered."""
    path = str(tmp_path / "servercert.pem")
    writeMismatchedCertificate(path)
    with pytest.raises(KeyMismatch):
        loadServerOptions(path)
    cert = ServerCertificate(path)
    assert cert.options() is None
    assert cert.options() is None
    assert logLines(logEvents) == [MISMATCH]


def test_fifo_is_not_opened(tmp_path, logEvents):
    from tests.unit.test_control import withoutHanging

    path = str(tmp_path / "servercert.pem")
    os.mkfifo(path)
    assert withoutHanging(path, ServerCertificate(path).options) is None
    assert logLines(logEvents) == ["warning: control/servercert.pem is not a regular file; ignored"]


def test_watched_certificate_is_read_only_by_check(tmp_path):
    """Registered with the controls, options() never touches the disk; check() (a thread's
    work in the daemon) returns what to apply on the reactor thread."""

    class Controls:
        watched: list = []

        def watch(self, source) -> None:
            self.watched.append(source)

    path = str(tmp_path / "servercert.pem")
    writeCertificate(path)
    controls = Controls()
    cert = ServerCertificate(path, controls)
    assert controls.watched == [cert]
    assert cert.options() is None  # not checked yet
    apply = cert.check()
    assert apply is not None and cert.options() is None
    apply()
    first = cert.options()
    assert isinstance(first, ssl.CertificateOptions)
    assert cert.check() is None  # unchanged
    os.unlink(path)
    assert cert.options() is first
    apply = cert.check()
    assert apply is not None
    apply()
    assert cert.options() is None
