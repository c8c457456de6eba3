"""
Nagle's algorithm off on every mail connection, client and server (docs/behaviour/tcpserver.md
8.3, remote.md 11.9).

SMTP, QMTP and POP3 are dialogues: each side writes a reply or a command and then waits for the
other. With Nagle's algorithm on, a write made while an earlier one is not yet acknowledged waits
for that acknowledgement, and the peer, waiting for more, delays its ACK (40 ms on Linux). A
pipelining client that sent MAIL, RCPT and DATA together got the RCPT reply (written after the
recipient check's thread job, so in a later write than the MAIL reply) 40 ms late; the remote
client's final dot after the message waited the same. Every write here is already a whole reply
or command, so nothing is gained by delaying it.
"""

from __future__ import annotations

from typing import Any


def setNoDelay(transport: Any) -> None:
    """
    Set C{TCP_NODELAY} on C{transport} when it is a TCP connection (directly or under TLS);
    a UNIX or in-memory transport, which has no such option, is left as it is.
    """
    noDelay = getattr(transport, "setTcpNoDelay", None)
    if noDelay is None:
        return
    try:
        noDelay(True)
    except OSError:  # not a TCP socket (a UNIX socket passed in as one)
        pass
