"""
C{qmail-queue} (also C{qmtwist queue}): queue the message on descriptor 0 with the envelope on
descriptor 1 (docs/behaviour/queue.md 5.3). Prints nothing; the exit code is the answer.

Callers that cannot write C{queue/} are served by the daemon's socket (as qmail's setuid
qmail-queue serves them).
"""

from __future__ import annotations

import os
import time

from qmtwist.errors import QQ_BUG, QQ_READ_ERROR, QueueError
from qmtwist.queue import store
from qmtwist.queue.envelope import parseQmailQueueEnvelope
from qmtwist.tools.base import ProgramEnv
from qmtwist.tools.queueclient import _viaSocket, queueWritable

CHUNK = 65536


def _readEnvelope(fd: int) -> bytes:
    data = []
    while True:
        try:
            chunk = os.read(fd, CHUNK)
        except OSError as e:
            raise QueueError(QQ_READ_ERROR, str(e))
        if not chunk:
            return b"".join(data)
        data.append(chunk)


def queueFromDescriptors(env: ProgramEnv, messageFd: int, envelopeFd: int) -> store.Queued | None:
    """Queue what the descriptors hold; L{QueueError} when nothing was queued."""
    layout = env.home.queue
    if not queueWritable(env.home):
        message = _readEnvelope(messageFd)
        sender, recipients = parseQmailQueueEnvelope(_readEnvelope(envelopeFd))
        _viaSocket(env.home, sender, recipients, message)
        return None
    p = store.PendingMessage(layout, os.getpid(), b"by uid %d" % os.getuid(), os.getuid(),
                             time.time())
    try:
        while True:
            try:
                chunk = os.read(messageFd, CHUNK)
            except OSError as e:
                raise QueueError(QQ_READ_ERROR, str(e))
            if not chunk:
                break
            p.write(chunk)
        sender, recipients = parseQmailQueueEnvelope(_readEnvelope(envelopeFd))
        p.setEnvelope(sender, recipients)
    except BaseException:
        p.discard()
        raise
    failed = store.commitRound([p], store.Syncer(), env.home.control)
    if p.id in failed:
        raise failed[p.id]
    store.pokeTrigger(layout)
    return p.queued()


def main(argv: list[str], env: ProgramEnv) -> int:
    if len(argv) > 1 and argv[1] in ("-h", "--help"):
        env.warn("usage: qmail-queue  (message on descriptor 0, envelope on descriptor 1)")
        return 0
    try:
        messageFd = env.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return QQ_READ_ERROR
    try:
        queueFromDescriptors(env, messageFd, 1)
    except QueueError as e:
        return e.code
    except Exception:
        return QQ_BUG
    return 0
