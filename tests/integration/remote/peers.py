"""
Loopback peers for remote delivery tests: an SMTP sink (with STARTTLS), a QMTP sink, and
self-signed certificates. Each listens on 127.0.0.x port 0 and records what it received.
"""

from __future__ import annotations

from typing import Any, Callable

from attrs import define, field
from twisted.internet import defer, protocol, reactor
from twisted.protocols.basic import LineReceiver

from qmtwist.netstring import NetstringError, NetstringParser, decodeList, encode


@define
class Received:
    sender: bytes
    recipients: list[bytes]
    raw: bytes  # DATA lines as sent on the wire, CRLF kept, dots still doubled
    tls: bool = False


class _SMTPSink(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 1_000_000

    def connectionMade(self) -> None:
        f = self.factory
        f.active += 1
        f.connections += 1
        f.peak = max(f.peak, f.active)
        self.sender: bytes | None = None
        self.rcpts: list[bytes] = []
        self.data: list[bytes] | None = None
        self.tls = False
        if f.holdConnections is not None:
            f.holdConnections.append(self)
            return
        if f.greeting is not None:
            self.reply(f.greeting)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.active -= 1

    def reply(self, text: bytes) -> None:
        self.transport.write(text.replace(b"\n", b"\r\n") + b"\r\n")

    def lineReceived(self, line: bytes) -> None:
        f = self.factory
        if self.data is not None:
            if line.rstrip(b"\r") == b".":
                assert self.sender is not None
                f.messages.append(Received(self.sender, self.rcpts, b"".join(self.data), self.tls))
                self.data = None
                self.reply(f.replies.get("dot", b"250 ok 1762326189 qp 7"))
            else:
                self.data.append(line + b"\n")
            return
        line = line.rstrip(b"\r")
        f.commands.append(line)
        verb = line.split(b" ", 1)[0].upper()
        if verb in f.replies:
            self.reply(f.replies[verb])
            return
        if verb == b"EHLO":
            ext = [b"250-sink.example", b"250-PIPELINING"]
            if f.tlsOptions is not None and not self.tls:
                ext.append(b"250-STARTTLS")
            ext.append(b"250 8BITMIME")
            self.reply(b"\n".join(ext))
        elif verb == b"HELO":
            self.reply(b"250 sink.example")
        elif verb == b"STARTTLS":
            self.reply(b"220 ready to start TLS")
            if f.injectAfterSTARTTLS:  # a man in the middle appends replies in plaintext
                self.transport.write(f.injectAfterSTARTTLS)
            if f.brokenTLS:
                self.transport.loseConnection()
            else:
                self.transport.startTLS(f.tlsOptions)
                self.tls = True
        elif verb == b"MAIL":
            self.sender = line[10:].strip(b"<>")
            self.rcpts = []
            self.reply(b"250 ok")
        elif verb == b"RCPT":
            addr = line[8:].strip(b"<>")
            answer = f.rcptReply(addr)
            if answer.startswith(b"2"):
                self.rcpts.append(addr)
            self.reply(answer)
        elif verb == b"DATA":
            answer = f.replies.get("DATA", b"354 go ahead")
            if answer.startswith(b"3"):
                self.data = []
            self.reply(answer)
        elif verb == b"QUIT":
            self.reply(b"221 bye")
            self.transport.loseConnection()
        else:
            self.reply(b"502 unimplemented")


@define(eq=False)
class SMTPSinkFactory(protocol.ServerFactory):
    """
    @ivar replies: verb (bytes, e.g. C{b"MAIL"}) or C{"dot"}/C{"DATA"} -> full reply text
        (LF between lines of a multi-line reply) overriding the default.
    @ivar rcptReply: address -> reply line.
    @ivar greeting: the 220 line, or L{None} to stay silent.
    @ivar holdConnections: when a list, connections are accepted and kept silent (added here).
    """

    protocol = _SMTPSink
    greeting: bytes | None = b"220 sink.example ESMTP"
    replies: dict[Any, bytes] = field(factory=dict)
    rcptReply: Callable[[bytes], bytes] = lambda a: b"250 ok"
    tlsOptions: Any = None
    brokenTLS: bool = False
    injectAfterSTARTTLS: bytes = b""
    holdConnections: list[Any] | None = None
    messages: list[Received] = field(factory=list)
    commands: list[bytes] = field(factory=list)
    active: int = 0
    peak: int = 0
    connections: int = 0


class _QMTPSink(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.parts: list[bytes] = []
        self.parser = NetstringParser(self.part)

    def dataReceived(self, data: bytes) -> None:
        try:
            self.parser.feed(data)
        except NetstringError:
            self.transport.loseConnection()

    def part(self, content: bytes) -> None:
        self.parts.append(content)
        if len(self.parts) < 3:
            return
        message, sender, rlist = self.parts
        self.parts = []
        recipients = decodeList(rlist)
        self.factory.packages.append((message, sender, recipients))
        answers = [self.factory.answer(r) for r in recipients]
        if self.factory.dropAfter is not None:
            answers = answers[: self.factory.dropAfter]
            self.transport.write(b"".join(encode(a) for a in answers))
            self.transport.loseConnection()
            return
        self.transport.write(b"".join(encode(a) for a in answers))


@define(eq=False)
class QMTPSinkFactory(protocol.ServerFactory):
    protocol = _QMTPSink
    answer: Callable[[bytes], bytes] = lambda r: b"Kok 1762326189 qp 9"
    dropAfter: int | None = None
    packages: list[tuple[bytes, bytes, list[bytes]]] = field(factory=list)
    connections: int = 0


def listen(factory: Any, interface: str = "127.0.0.1") -> tuple[Any, int]:
    port = reactor.listenTCP(0, factory, interface=interface)
    return port, port.getHost().port


def makeCertificates(names: list[str]) -> tuple[bytes, Any]:
    """
    A throw-away CA and a server certificate for C{names}.

    @return: C{(caPEM, serverTLSOptions)}.
    """
    from tests.integration.remote.tlspeers import PrivateCA

    ca = PrivateCA("qmtwist test CA")
    return ca.pem, ca.issue(names).options()


def stopAll(ports: list[Any]) -> defer.Deferred:
    return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])


class PostfixSmtpSink:
    """
    Postfix's C{smtp-sink} (Debian package postfix) as a child on 127.0.0.1.

    @param options: smtp-sink options, e.g. C{["-r", "rcpt"]} (4xx) or C{["-f", "data"]} (5xx).
    """

    BINARY = "/usr/sbin/smtp-sink"

    def __init__(self, options: list[str] | None = None, backlog: int = 256) -> None:
        self.options = options or []
        self.backlog = backlog
        self.proc: Any = None
        self.port = 0

    @classmethod
    def available(cls) -> bool:
        import os

        return os.access(cls.BINARY, os.X_OK)

    def start(self, port: int | None = None) -> int:
        """Listen on C{port} (a free one when L{None}); return it once connectable."""
        import os
        import socket
        import subprocess
        import time

        from tests.support import freePort

        if port is None:
            port = freePort()
        self.port = port
        user = ["-u", "nobody"] if os.getuid() == 0 else []
        self.proc = subprocess.Popen(
            [self.BINARY, *user, *self.options, f"127.0.0.1:{self.port}", str(self.backlog)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"smtp-sink exited: {self.proc.stderr.read()!r}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self.port
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("smtp-sink did not start listening")
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
