"""
Stopping the real daemon (docs/behaviour/queue.md 6.1, FAQ 7.1): the pid file stays while the
first TERM waits for deliveries; a second TERM (C{qmtwist ctl term}) abandons them without
losing or finishing anything; C{qmtwist ctl} without a daemon says so in one line.
"""

from __future__ import annotations

import os
import socketserver
import subprocess
import sys
import threading

import pytest

from qmtwist.home import Home, setup
from tests.integration.daemon import Daemon, waitFor

NO_LISTENERS = ["--smtp", "none", "--qmtp", "none", "--pop3", "none"]


class Sink:
    """
    A minimal SMTP server on 127.0.0.1 in a thread (blocking sockets, not the test's reactor).
    With C{silent}, it accepts connections and never says a word, as a hung peer does: the
    client waits for the greeting until timeoutremote.
    """

    def __init__(self, silent: bool) -> None:
        self.silent = silent
        self.connections = 0
        self.messages: list[bytes] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                with sink.lock:
                    sink.connections += 1
                if sink.silent:
                    sink.release.wait(120)
                    return
                sink.converse(self.rfile, self.wfile)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def converse(self, rfile, wfile) -> None:
        wfile.write(b"220 sink.example ESMTP\r\n")
        data: list[bytes] | None = None
        for line in rfile:
            if data is not None:
                if line.rstrip(b"\r\n") == b".":
                    with self.lock:
                        self.messages.append(b"".join(data))
                    data = None
                    wfile.write(b"250 ok\r\n")
                else:
                    data.append(line)
                continue
            verb = line[:4].upper()
            if verb == b"QUIT":
                wfile.write(b"221 bye\r\n")
                return
            if verb == b"DATA":
                data = []
                wfile.write(b"354 go ahead\r\n")
            else:
                wfile.write(b"250 ok\r\n")

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def qmtwist(home: Home, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qmtwist.cli", "--home", home.path, *args],
                          capture_output=True, timeout=60, **kw)


def route(home: Home, port: int) -> None:
    with open(os.path.join(home.control, "smtproutes"), "wb") as f:
        f.write(b"remote.example:127.0.0.1:%d\n" % port)


def remoteFileText(home: Home) -> bytes:
    """The contents of the one remote/ channel file in the queue (the recipient's T or D)."""
    for i in range(23):
        for name in os.listdir(home.queue.sub("remote", i)):
            with open(os.path.join(home.queue.sub("remote", i), name), "rb") as f:
                return f.read()
    return b""


def test_second_term_abandons_hung_delivery_and_restart_delivers_once(tmp_path):
    home = Home(str(tmp_path / "home"))
    setup(home, me="sender.example")
    hung, working = Sink(silent=True), Sink(silent=False)
    route(home, hung.port)
    d = Daemon(str(tmp_path), ["--home", home.path, *NO_LISTENERS], str(tmp_path / "log"))
    d.start()
    try:
        d.waitLine("status: local 0/10 remote 0/20")
        r = qmtwist(home, "inject", "-f", "joe@sender.example", "friend@remote.example",
                    input=b"Subject: held\n\nheld by a silent peer\n")
        assert r.returncode == 0, r.stderr
        d.waitLine("starting delivery 1: msg")
        waitFor(lambda: hung.connections == 1, "the delivery's connection to the silent peer")

        # first TERM: stop taking work, wait for the hung delivery; the pid file stays
        assert qmtwist(home, "ctl", "term").returncode == 0
        d.waitLine("status: local 0/10 remote 1/20 exitasap")
        assert d.proc.poll() is None
        assert os.path.exists(home.pidfile)
        with open(home.pidfile) as f:
            assert int(f.read()) == d.proc.pid

        # second TERM through the pid file: abandon the delivery, exit 0
        r = qmtwist(home, "ctl", "term")
        assert (r.returncode, r.stderr) == (0, b"")
        assert d.proc.wait(30) == 0
        lines = d.lines()
        abandoning = "status: second TERM: abandoning 1 deliveries in flight"
        assert lines.count(abandoning) == 1
        assert lines.index("status: exiting") > lines.index(abandoning)
        assert not [x for x in lines if x.startswith("delivery 1:")]
        assert not os.path.exists(home.pidfile)
        # nothing delivered, nothing marked done: the recipient is still T in remote/
        assert hung.messages == [] and working.messages == []
        assert remoteFileText(home) == b"Tfriend@remote.example\0"

        # a restart against a working peer delivers it, once
        route(home, working.port)
        d.start()
        report = d.waitFor(lambda: next(
            (x for x in d.lines() if x.startswith("delivery 1: msg ")), None), "delivery 1")
        assert report.split(": ")[2] == "success"
        d.waitLine("end msg")
        assert qmtwist(home, "ctl", "term").returncode == 0
        assert d.proc.wait(30) == 0
    finally:
        d.stop()
        hung.close()
        working.close()
    assert len(working.messages) == 1
    assert working.messages[0].endswith(b"\r\nheld by a silent peer\r\n")
    assert hung.messages == []
    assert remoteFileText(home) == b""
    assert not os.path.exists(home.pidfile)


def test_ctl_without_daemon_says_not_running(tmp_path):
    home = Home(str(tmp_path / "home"))
    setup(home, me="sender.example")
    for sig in ("term", "hup", "alrm"):
        r = qmtwist(home, "ctl", sig)
        assert r.returncode == 111
        assert r.stdout == b""
        assert r.stderr == (f"qmtwist ctl: fatal: not running (no {home.pidfile})\n").encode()


def test_ctl_with_stale_pid_file_says_not_running(tmp_path):
    home = Home(str(tmp_path / "home"))
    setup(home, me="sender.example")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with open(home.pidfile, "w") as f:
        f.write(f"{gone.pid}\n")
    r = qmtwist(home, "ctl", "term")
    assert r.returncode == 111
    assert r.stderr == (f"qmtwist ctl: fatal: not running (stale {home.pidfile}: "
                        f"no process {gone.pid})\n").encode()


@pytest.mark.parametrize("content", [b"0\n", b"\n", b"12x\n"])
def test_ctl_refuses_a_pid_file_without_a_daemon_pid(tmp_path, content):
    """A pid file saying 0 must not become kill(0): that would signal ctl's own process group."""
    home = Home(str(tmp_path / "home"))
    setup(home, me="sender.example")
    with open(home.pidfile, "wb") as f:
        f.write(content)
    # a session of its own, so kill(0, ...) would hit only the ctl process itself
    r = qmtwist(home, "ctl", "hup", start_new_session=True)
    assert r.returncode == 111, r
    assert r.stderr == f"qmtwist ctl: fatal: {home.pidfile} holds no pid\n".encode()



def test_sendmail_q_refuses_pid_zero(tmp_path):
    """sendmail -q signals through the same pid file: 0 must not alarm its process group."""
    home = Home(str(tmp_path / "home"))
    setup(home, me="sender.example")
    with open(home.pidfile, "wb") as f:
        f.write(b"0\n")
    r = qmtwist(home, "sendmail", "-q", start_new_session=True)
    assert (r.returncode, r.stderr) == (111, b"sendmail: fatal: qmtwist is not running\n")
