"""
C{--metrics}: a real twistd child takes known traffic over SMTP (smtplib), delivers it locally,
to a second daemon over STARTTLS and to a route nobody answers, and its C{/metrics} page shows
exactly that (docs/behaviour/operations.md 21.2).
"""

from __future__ import annotations

import json
import os
import re
import smtplib
import subprocess
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from qmtwist.home import Home, setup
from qmtwist.users import userCommand
from tests.integration.daemon import Daemon
from tests.integration.smtp.test_tls import noVerify, writeCertificate
from tests.integration.test_daemon import maildirFiles
from tests.support import freePort, waitFor


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The page at /metrics as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def test_scrape_after_known_traffic_shows_exact_counts(tmp_path):
    # the peer: a second daemon with a certificate, so the delivery to it uses STARTTLS
    peer = Home(str(tmp_path / "peer"))
    setup(peer, me="far.example")
    writeCertificate(os.path.join(peer.control, "servercert.pem"))
    assert userCommand(peer, ["add", "bob"]) == 0
    peerPort = freePort()
    b = Daemon(str(tmp_path), ["--home", peer.path, "--smtp", f"tcp:{peerPort}:interface=127.0.0.1",
                               "--qmtp", "none", "--pop3", "none"], str(tmp_path / "peer.log"))

    home = Home(str(tmp_path / "home"))
    setup(home, me="test.example")
    assert userCommand(home, ["add", "alice"]) == 0
    writeCertificate(os.path.join(home.control, "servercert.pem"))
    write(os.path.join(home.rules, "smtp"), b'127.:allow,RELAYCLIENT=""\n')
    dead = freePort()  # nothing listens there: a deferral of class "connection"
    write(os.path.join(home.control, "smtproutes"),
          b"far.example:127.0.0.1:%d\ndead.example:127.0.0.1:%d\n" % (peerPort, dead))
    smtpPort, metricsPort = freePort(), freePort()
    a = Daemon(str(tmp_path), ["--home", home.path, "--smtp", f"tcp:{smtpPort}:interface=127.0.0.1",
                               "--qmtp", "none", "--pop3", "none",
                               "--metrics", f"tcp:{metricsPort}:interface=127.0.0.1"],
               str(tmp_path / "log"))
    b.start()
    a.start()
    try:
        b.waitLine(f"smtp: listening on 127.0.0.1:{peerPort}")
        a.waitLine(f"smtp: listening on 127.0.0.1:{smtpPort}")
        before = scrape(metricsPort)
        assert before[("qmtwist_messages_queued_total", ())] == 0
        assert before[("qmtwist_queue_messages", ())] == 0

        recipients = [b"alice@test.example"] * 3 + [b"bob@far.example", b"carol@dead.example"]
        for i, rcpt in enumerate(recipients):
            with smtplib.SMTP("127.0.0.1", smtpPort, timeout=30) as s:
                if i == 2:
                    s.starttls(context=noVerify())
                s.sendmail("joe@example.org", [rcpt.decode()], b"Subject: m\r\n\r\nhello\r\n")
        alice = os.path.join(home.homes, "alice", "Maildir")
        bob = os.path.join(peer.homes, "bob", "Maildir")
        waitFor(lambda: len(maildirFiles(alice)) == 3, "alice's three messages")
        waitFor(lambda: len(maildirFiles(bob)) == 1, "bob's message at the peer")
        a.waitFor(lambda: any(re.match(r"delivery 5: msg \d+: deferral: ", line)
                              for line in a.lines()), "delivery 5's deferral")
        a.waitFor(lambda: sum(x.startswith("end msg") for x in a.lines()) == 4, "four ends")

        # the outbound connection closes after its idle time in the cache (remote.md 11.8)
        m = a.waitFor(lambda: (lambda m: m if m.get(("qmtwist_sessions_total", (
            ("direction", "outbound"), ("protocol", "smtp"), ("tls", "yes")))) == 1 else None)(
            scrape(metricsPort)), "the outbound session counted once it closed")
        assert m[("qmtwist_messages_queued_total", ())] == 5
        assert m[("qmtwist_commit_round_messages_sum", ())] == 5
        assert m[("qmtwist_smtp_sessions_total", ())] == 5

        def deliveries(channel: str, result: str) -> float:
            return m[("qmtwist_deliveries_total", (("channel", channel), ("result", result)))]

        assert deliveries("local", "success") == 3
        assert deliveries("remote", "success") == 1
        assert deliveries("remote", "deferral") == 1
        assert deliveries("local", "deferral") == 0
        assert deliveries("local", "failure") == deliveries("remote", "failure") == 0
        assert m[("qmtwist_deferrals_total", (("channel", "remote"), ("reason", "connection")))] == 1
        assert m[("qmtwist_delivery_latency_seconds_count", (("channel", "local"),))] == 3
        assert m[("qmtwist_delivery_latency_seconds_count", (("channel", "remote"),))] == 1
        # inbound: four plaintext SMTP sessions and one STARTTLS; outbound: one over TLS
        assert m[("qmtwist_sessions_total", (("direction", "inbound"), ("protocol", "smtp"),
                                             ("tls", "no")))] == 4
        assert m[("qmtwist_sessions_total", (("direction", "inbound"), ("protocol", "smtp"),
                                             ("tls", "yes")))] == 1
        assert ("qmtwist_sessions_total", (("direction", "outbound"), ("protocol", "smtp"),
                                           ("tls", "no"))) not in m
        # the deferred message is the queue's only one
        assert m[("qmtwist_queue_messages", ())] == 1
        assert m[("qmtwist_queue_recipients", (("channel", "remote"),))] == 1
        assert m[("qmtwist_queue_recipients", (("channel", "local"),))] == 0
        assert m[("qmtwist_queue_oldest_message_age_seconds", ())] > 0
        assert m[("qmtwist_deliveries_in_flight", (("channel", "remote"),))] == 0
        # qmtwist ctl stats --json (through the control socket) shows the same figures
        r = subprocess.run([sys.executable, "-m", "qmtwist.cli", "--home", home.path, "ctl",
                            "stats", "--json"], capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        stats = json.loads(r.stdout)
        assert stats["qmtwist_messages_queued_total"] == 5
        assert stats["qmtwist_smtp_sessions_total"] == 5
        assert stats["qmtwist_queue_messages"] == 1
        assert stats["qmtwist_deliveries_total"]['channel="local",result="success"'] == 3
        assert stats["qmtwist_deliveries_total"]['channel="remote",result="deferral"'] == 1
        # every other path is not found, and a scrape writes no log line
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{metricsPort}/", timeout=10)
            raise AssertionError("/ answered")
        except urllib.error.HTTPError as e:
            assert e.code == 404
    finally:
        assert a.stop() == 0
        assert b.stop() == 0
    # the log is written in batches: looked at after the stop, which writes every waiting line
    assert not any("GET /metrics" in x for x in a.lines())
