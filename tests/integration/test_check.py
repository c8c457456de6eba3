"""
C{qmtwist check} (docs/behaviour/operations.md 21.6): silent and exit 0 on a fresh home; each thing
broken on purpose gives its own line and exit 1. The DKIM records are checked against the
loopback DNS server of tests/dnsserver.py.
"""

from __future__ import annotations

import base64
import os
import shutil

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.internet import reactor
from twisted.names import dns

from qmtwist.check import dkimProblems
from qmtwist.home import Home, setup
from qmtwist.remote.mx import makeResolver
from qmtwist.users import userCommand
from tests.dnsserver import loopbackDNS  # noqa: F401  (the fixture)
from tests.integration.smtp.test_tls import writeCertificate, writeMismatchedCertificate
from tests.integration.test_daemon import qmtwist


@pytest.fixture
def fresh(tmp_path) -> Home:
    home = Home(str(tmp_path / "home"))
    setup(home, me="test.example")
    assert userCommand(home, ["add", "alice"]) == 0
    writeCertificate(os.path.join(home.control, "servercert.pem"))
    os.chmod(os.path.join(home.control, "servercert.pem"), 0o600)
    return home


def check(home: Home) -> tuple[int, list[str]]:
    r = qmtwist(home, "check", "--no-dns")
    assert r.stderr == b""
    return r.returncode, r.stdout.decode().splitlines()


def test_fresh_home_passes(fresh):
    assert check(fresh) == (0, [])


def test_each_broken_thing_is_one_line(fresh):
    home = fresh
    os.chmod(home.control, 0o777)
    os.chmod(os.path.join(home.users, "passwd"), 0o644)
    with open(os.path.join(home.control, "concurrencylocal"), "w") as f:
        f.write("lots\n")
    with open(os.path.join(home.rules, "smtp"), "w") as f:
        f.write("127.:allow\nnot a rule\n")
    writeMismatchedCertificate(os.path.join(home.control, "servercert.pem"))
    os.chmod(os.path.join(home.control, "servercert.pem"), 0o600)
    shutil.rmtree(os.path.join(home.homes, "alice"))
    os.rmdir(home.queue.sub("bounce"))
    os.chown(home.queue.sub("todo"), 4242, 4242)
    os.unlink(os.path.join(home.bin, "qmail-inject"))
    code, lines = check(home)
    assert code == 1
    uid = os.stat(home.path).st_uid
    expected = [
        "control: mode 0777 lets group or others write; use chmod go-w",
        "queue/todo: owned by uid 4242, not by the home's owner uid %d" % uid,
        "queue/bounce: missing (qmtwist setup creates it)",
        "users/passwd: mode 0644 lets group or others read it; use chmod go-rwx",
        "bin/qmail-inject: missing (qmtwist setup writes it)",
        "warning: control/concurrencylocal line 1: not a number; using default 10",
        "control/servercert.pem: private key does not match certificate",
        "user alice: home directory %s is missing" % os.path.join(home.homes, "alice"),
        "warning: rules/smtp line 2: unable to parse this line: not a rule",
    ]
    for line in expected:
        assert line in lines, (line, lines)
    assert len(lines) == len(expected), lines


def test_missing_home(tmp_path):
    home = Home(str(tmp_path / "nothing"))
    r = qmtwist(home, "check")
    assert r.returncode == 111
    assert r.stdout.decode() == f"{home.path}: not a qmtwist home (no such directory)\n"


def _rsa() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(der).decode()


def _ed25519() -> tuple[bytes, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pem, base64.b64encode(raw).decode()


@pytest_twisted.inlineCallbacks
def test_dkim_keys_against_dns(home, loopbackDNS):  # noqa: F811
    keys = os.path.join(home.control, "dkim")
    assert (yield dkimProblems(home.control, makeResolver(reactor, loopbackDNS.servers))) == []

    def key(domain: str, selector: str, made: tuple[bytes, str]) -> str:
        os.makedirs(os.path.join(keys, domain), exist_ok=True)
        with open(os.path.join(keys, domain, selector + ".key"), "wb") as f:
            f.write(made[0])
        return made[1]

    good = key("good.example", "s1", _rsa())
    # the record split into two strings, as long RSA keys are
    loopbackDNS.add(b"s1._domainkey.good.example",
                    dns.Record_TXT(b"v=DKIM1; k=rsa; p=" + good[:100].encode(), good[100:].encode()))
    edGood = key("good.example", "ed", _ed25519())
    loopbackDNS.add(b"ed._domainkey.good.example",
                    dns.Record_TXT(f"v=DKIM1; k=ed25519; p={edGood}".encode()))
    key("good.example", "missing", _rsa())
    key("other.example", "s1", _rsa())
    loopbackDNS.add(b"s1._domainkey.other.example",
                    dns.Record_TXT(f"v=DKIM1; k=rsa; p={_rsa()[1]}".encode()))
    key("quiet.example", "s1", _rsa())
    loopbackDNS.silence(b"quiet.example")  # DNS does not answer: not checked
    os.makedirs(os.path.join(keys, "bad.example"))
    with open(os.path.join(keys, "bad.example", "s1.key"), "wb") as f:
        f.write(b"not a key\n")
    found = yield dkimProblems(home.control, makeResolver(reactor, loopbackDNS.servers), (1,))
    assert sorted(found) == sorted([
        "DKIM key missing._domainkey.good.example: no DKIM record in DNS (NXDOMAIN)",
        "DKIM key s1._domainkey.other.example: the DNS record's p= is not this key's public key",
        found[[x.startswith("control/dkim/bad.example/s1.key: not a usable private key")
               for x in found].index(True)],
    ])


@pytest_twisted.inlineCallbacks
def test_check_command_asks_the_dns_given(fresh, loopbackDNS):  # noqa: F811
    """The command's own reactor run: --dns HOST:PORT, a key without its record."""
    import sys

    from twisted.internet.utils import getProcessOutputAndValue

    os.makedirs(os.path.join(fresh.control, "dkim", "test.example"))
    with open(os.path.join(fresh.control, "dkim", "test.example", "qmtwist.key"), "wb") as f:
        f.write(_ed25519()[0])
    host, port = loopbackDNS.servers[0]
    out, err, code = yield getProcessOutputAndValue(
        sys.executable, ["-m", "qmtwist.cli", "--home", fresh.path, "check", "--dns",
                         f"{host}:{port}"], env=dict(os.environ))
    assert (code, err) == (1, b"")
    assert out == b"DKIM key qmtwist._domainkey.test.example: no DKIM record in DNS (NXDOMAIN)\n"
    assert (b"qmtwist._domainkey.test.example", dns.TXT) in loopbackDNS.queries
