"""
Whole daemons talking to each other through remote delivery and a loopback DNS server:
FAQ 7.4 (a big network: mailhost forwards bob@movie.edu to bobshost) and FAQ 2.1 (a domain
taken out of locals goes to its MX).

Each instance is `twistd -n qmtwist` with its SMTP listener on port 25 of its own loopback
address (127.0.0.2, 127.0.0.3), as MX delivery always uses port 25; so these tests need root
and skip without it. The DNS server runs as a child (tests/dnsserver.py) because the test
process blocks while polling the children.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from qmtwist.home import Home, setup
from tests.integration.daemon import Daemon, waitFor

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
NO_OTHERS = ["--qmtp", "none", "--pop3", "none"]

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="needs root to listen on port 25")


def _port25Free(ip: str) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, 25))
        except OSError:
            return False
    return True


@pytest.fixture
def env(monkeypatch):
    # children must import this work tree's qmtwist, whatever else is installed
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for ip in ("127.0.0.2", "127.0.0.3"):
        if not _port25Free(ip):
            pytest.skip(f"port 25 on {ip} is busy")


@pytest.fixture
def dnsChild(request):
    procs = []

    def start(*args: str) -> str:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.dnsserver", *args], cwd=REPO,
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        procs.append(proc)
        line = proc.stdout.readline().decode().strip()
        assert line.isdigit(), f"DNS child said {line!r}"
        return f"127.0.0.1:{line}"

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
        proc.stdout.close()


@pytest.fixture
def daemons():
    started: list[Daemon] = []
    yield started
    for d in started:
        d.stop()


def instance(tmp_path, daemons, name: str, me: str, dns: str, smtp: str) -> Home:
    home = Home(str(tmp_path / name))
    setup(home, me=me)
    d = Daemon(str(tmp_path), ["--home", home.path, "--dns", dns, "--smtp", smtp, *NO_OTHERS],
               str(tmp_path / f"{name}.log"))
    d.home = home  # type: ignore[attr-defined]
    daemons.append(d)
    return home


def write(path: str, text: bytes) -> None:
    with open(path, "wb") as f:
        f.write(text)


def cli(home: Home, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qmtwist.cli", "--home", home.path, *args],
                          input=stdin, capture_output=True, cwd=REPO)


def newMail(maildir: str) -> list[str]:
    d = os.path.join(maildir, "new")
    return [os.path.join(d, n) for n in os.listdir(d)]


def test_faq74_bigNetwork(tmp_path, env, dnsChild, daemons) -> None:
    dns = dnsChild("--mx", "movie.edu=10:mailhost.movie.edu",
                   "--a", "mailhost.movie.edu=127.0.0.2", "--a", "bobshost.movie.edu=127.0.0.3")
    mailhost = instance(tmp_path, daemons, "mailhost", "mailhost.movie.edu", dns,
                        "tcp:25:interface=127.0.0.2")
    write(os.path.join(mailhost.control, "virtualdomains"), b"movie.edu:alias-movie\n")
    write(os.path.join(mailhost.alias, ".qmail-movie-bob"), b"bob@bobshost.movie.edu\n")
    write(os.path.join(mailhost.control, "rcpthosts"),
          b"mailhost.movie.edu\nlocalhost\nmovie.edu\n")
    bobshost = instance(tmp_path, daemons, "bobshost", "bobshost.movie.edu", dns,
                        "tcp:25:interface=127.0.0.3")
    assert cli(bobshost, "user", "add", "bob").returncode == 0
    client = instance(tmp_path, daemons, "client", "client.movie.edu", dns, "none")
    for home in (mailhost, bobshost, client):
        write(os.path.join(home.control, "defaulthost"), b"movie.edu\n")
    for d in daemons:
        d.start()
    for d in daemons:
        d.waitLine("status: local 0/10 remote 0/20")

    r = cli(client, "inject", "-f", "joe@client.movie.edu", "bob@movie.edu",
            stdin=b"Subject: lunch\n\nsee you at noon\n")
    assert r.returncode == 0, r.stderr
    maildir = os.path.join(bobshost.homes, "bob", "Maildir")
    [path] = waitFor(lambda: newMail(maildir), "the message in bob's Maildir on bobshost")
    with open(path, "rb") as f:
        text = f.read()
    assert text.startswith(b"Return-Path: <joe@client.movie.edu>\n"
                           b"Delivered-To: bob@bobshost.movie.edu\n")
    assert b"Delivered-To: alias-movie-bob@movie.edu\n" in text
    assert text.endswith(b"\n\nsee you at noon\n")
    # the log is written in batches: wait for both delivery lines
    daemons[2].waitLine("success: 127.0.0.2_accepted_message.")
    daemons[0].waitLine("success: 127.0.0.3_accepted_message.")
    clientLog, mailhostLog = daemons[2].lines(), daemons[0].lines()
    assert any("success: 127.0.0.2_accepted_message./Remote_host_said:_250_2.0.0_ok" in line
               for line in clientLog), clientLog[-10:]
    assert any("success: 127.0.0.3_accepted_message./Remote_host_said:_250_2.0.0_ok" in line
               for line in mailhostLog), mailhostLog[-10:]


def test_faq21_domainNotInLocalsGoesToMX(tmp_path, env, dnsChild, daemons) -> None:
    dns = dnsChild("--mx", "af.mil=10:pokey.af.mil", "--a", "pokey.af.mil=127.0.0.3",
                   "--a", "af.mil=127.0.0.2")
    # af.mil host: me is af.mil, but af.mil has been removed from locals (FAQ 2.1)
    zippy = instance(tmp_path, daemons, "zippy", "af.mil", dns, "tcp:25:interface=127.0.0.2")
    write(os.path.join(zippy.control, "locals"), b"localhost\n")
    pokey = instance(tmp_path, daemons, "pokey", "pokey.af.mil", dns,
                     "tcp:25:interface=127.0.0.3")
    write(os.path.join(pokey.control, "locals"), b"pokey.af.mil\naf.mil\n")
    write(os.path.join(pokey.control, "rcpthosts"), b"pokey.af.mil\naf.mil\n")
    assert cli(pokey, "user", "add", "boss").returncode == 0
    for d in daemons:
        d.start()
    for d in daemons:
        d.waitLine("status: local 0/10 remote 0/20")
    r = cli(zippy, "inject", "-f", "joe@af.mil", "boss@af.mil",
            stdin=b"Subject: disk\n\nfull\n")
    assert r.returncode == 0, r.stderr
    [path] = waitFor(lambda: newMail(os.path.join(pokey.homes, "boss", "Maildir")),
                     "the message in boss's Maildir on pokey")
    with open(path, "rb") as f:
        assert f.read().startswith(b"Return-Path: <joe@af.mil>\nDelivered-To: boss@af.mil\n")
    daemons[0].waitLine("to remote boss@af.mil")  # the log is written in batches
