"""
C{qmail-queue} (also C{qmtwist queue}): queue the message on descriptor 0 with the envelope on
descriptor 1 (docs/behaviour/queue.md 5.3). Prints nothing; the exit code is the answer.

Callers that cannot write C{queue/} are served by the daemon's socket (as qmail's setuid
qmail-queue serves them).
"""

from __future__ import annotations

import os

from qmtwist.errors import QQ_BUG, QQ_READ_ERROR, QueueError
from qmtwist.queue import store
from qmtwist.queue.envelope import parseQmailQueueEnvelope
from qmtwist.tools.base import ProgramEnv
from qmtwist.tools.queueclient import _viaSocket, queueWritable

CHUNK = 65536


def _readAll(fd: int) -> bytes:
    return b"".join(store.readChunks(fd, CHUNK))


def queueFromDescriptors(env: ProgramEnv, messageFd: int, envelopeFd: int) -> store.Queued | None:
    """
    Queue what the descriptors hold; L{QueueError} when nothing was queued. The message is
    streamed into the queue (L{store.injectStream}); the envelope is read once it has ended.
    """
    if not queueWritable(env.home):
        message = _readAll(messageFd)
        sender, recipients = parseQmailQueueEnvelope(_readAll(envelopeFd))
        _viaSocket(env.home, sender, recipients, message)
        return None
    return store.injectStream(
        env.home.queue, store.readChunks(messageFd, CHUNK),
        lambda: parseQmailQueueEnvelope(_readAll(envelopeFd)), b"by uid %d" % os.getuid(),
        controlDir=env.home.control)


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
