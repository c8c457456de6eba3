"""
How the programs of C{bin/} queue a message (docs/behaviour/queue.md 5.3): the client side of qmail-queue.

L{queueMessage} tries, in order:

 1. C{$QMAILQUEUE} when set: that program is run with the message on descriptor 0 and the
    envelope (C{F<sender>\\0}, C{T<recip>\\0} each, then C{\\0}) on descriptor 1; its exit code
    is the answer (qmail 1.03's QMAILQUEUE patch).
 2. The queue directly (L{qmtwist.queue.store.inject}) when the caller may write C{queue/pid},
    C{queue/mess}, C{queue/intd} and C{queue/todo}; the Received line says C{by uid <uid>}.
 3. Otherwise the running daemon, over the Unix socket C{HOME/run/qmail-queue.sock}.

The socket protocol (what the daemon's server implements)::

    client -> server   netstring(message) netstring(envelope)
    server -> client   "<exitcode>\\n"   (decimal qmail-queue exit code, 0 = queued)

A netstring is C{<decimal length>:<bytes>,} (L{qmtwist.netstring}). The envelope is exactly the
qmail-queue envelope above, final C{\\0} included. The server learns the client's uid (and pid,
usable as the qp) from the socket's peer credentials (C{SO_PEERCRED}); it never trusts a uid sent
by the client.
The client half-closes nothing; it waits for the reply line and then closes. No daemon (the
socket is missing or refuses) and no write access to the queue: exit code 62.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading

from attrs import frozen

from qmtwist.durable import writeAll
from qmtwist.errors import QQ_QUEUE_DIR, QQ_READ_ERROR, QueueError
from qmtwist.home import Home
from qmtwist.netstring import encode
from qmtwist.queue import store
from qmtwist.queue.store import Readable
from qmtwist.queue.envelope import checkAddress


@frozen
class Accepted:
    """A queued message: the qp to print (C{forward: qp <qp>}) and, when known, its number."""

    qp: int
    id: int | None = None


def envelopeBytes(sender: bytes, recipients: list[bytes]) -> bytes:
    """The qmail-queue envelope: C{F<s>\\0}, C{T<r>\\0} per recipient, C{\\0}."""
    return b"F" + sender + b"\0" + b"".join(b"T" + r + b"\0" for r in recipients) + b"\0"


def _readAll(message: bytes | Readable) -> bytes:
    if isinstance(message, bytes):
        return message
    try:
        return message.read()
    except OSError as e:
        raise QueueError(QQ_READ_ERROR, str(e))


def queueWritable(home: Home) -> bool:
    """Whether this process may inject into C{home}'s queue directly."""
    layout = home.queue
    return all(
        os.access(layout.sub(d), os.W_OK | os.X_OK) for d in ("pid", "mess", "intd", "todo"))


def queueMessage(
    home: Home,
    environ: dict[str, str],
    sender: bytes,
    recipients: list[bytes],
    message: bytes | Readable,
) -> Accepted:
    """
    Queue one message by the first way that applies (see the module docstring).

    @raise QueueError: nothing was queued; C{.code} is the qmail-queue exit code, -1 when a
        QMAILQUEUE program was killed (text C{qq crashed (#4.3.0)}); a QMAILQUEUE program that
        cannot be started gives the text C{unable to run qmail-queue}, as qmail-inject says.
    """
    for address in [sender, *recipients]:
        checkAddress(address)
    program = environ.get("QMAILQUEUE")
    if program:
        return _runProgram(program, environ, sender, recipients, message)
    if queueWritable(home):
        queued = store.inject(
            home.queue, sender, recipients, message, b"by uid %d" % os.getuid(),
            controlDir=home.control)
        return Accepted(queued.qp, queued.id)
    return _viaSocket(home, sender, recipients, message)


class _Temporary(QueueError):
    """A temporary failure whose text is not one of the exit-code texts."""

    def __init__(self, text: str, code: int = 81) -> None:
        super().__init__(81)
        self.text = text
        self.isPermanent = False
        self.code = code


def _runProgram(
    program: str, environ: dict[str, str], sender: bytes, recipients: list[bytes],
    message: bytes | Readable,
) -> Accepted:
    data = _readAll(message)
    envelope = envelopeBytes(sender, recipients)
    envRead, envWrite = os.pipe()
    try:
        child = subprocess.Popen(
            [program], stdin=subprocess.PIPE, stdout=envRead, env=environ, close_fds=True)
    except OSError:
        os.close(envRead)
        os.close(envWrite)
        raise _Temporary("unable to run qmail-queue")
    os.close(envRead)

    def writeEnvelope() -> None:
        try:
            writeAll(envWrite, envelope)
        except OSError:
            pass
        finally:
            os.close(envWrite)

    assert child.stdin is not None
    writer = threading.Thread(target=writeEnvelope, daemon=True)
    try:
        child.stdin.write(data)
    except OSError:
        pass
    try:
        child.stdin.close()
    except OSError:
        pass
    writer.start()
    code = child.wait()
    writer.join()
    if code < 0:
        raise _Temporary("qq crashed (#4.3.0)", -1)
    if code:
        raise QueueError(code)
    return Accepted(child.pid)


def _recvLine(sock: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            break
        buf += chunk
        if len(buf) > 64:
            break
    return buf


def _viaSocket(
    home: Home, sender: bytes, recipients: list[bytes], message: bytes | Readable
) -> Accepted:
    data = _readAll(message)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(home.queueSocket)
        except OSError as e:
            raise QueueError(QQ_QUEUE_DIR, f"queue not writable and no daemon: {e}")
        try:
            sock.sendall(encode(data) + encode(envelopeBytes(sender, recipients)))
            reply = _recvLine(sock)
        except OSError as e:
            raise QueueError(74, str(e))
    finally:
        sock.close()
    try:
        code = int(reply.strip())
    except ValueError:
        raise QueueError(74, f"bad reply from the daemon: {reply!r}")
    if code:
        raise QueueError(code)
    return Accepted(os.getpid())
