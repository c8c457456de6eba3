"""
qmail-qread: list the messages in the queue (docs/behaviour/tools.md 13). Replaces qmail's qmail-qread.

Like qmail, it lists preprocessed messages (those with an C{info} file): one line
C{D Mon YYYY hh:mm:ss GMT  #N  BYTES  <SENDER> } (plus C{ bouncing}), then each recipient as
C{\\tlocal\\tADDR} or C{\\tremote\\tADDR}, prefixed by C{  done} once delivered. Unprintable
bytes are shown as C{_}.
"""

from __future__ import annotations

import os

from qmtwist.queue.layout import SPLIT
from qmtwist.received import date822
from qmtwist.tools.base import ProgramEnv


def _printable(data: bytes) -> bytes:
    return bytes(c if 32 <= c <= 126 else 95 for c in data)


def listing(layout, warn) -> bytes:  # type: ignore[no-untyped-def]
    """The whole listing as bytes; C{warn(text)} for per-message trouble."""
    out = []
    for i in range(SPLIT):
        for name in sorted(os.listdir(layout.sub("info", i)), key=lambda n: (len(n), n)):
            if not name.isdigit():
                continue
            n = int(name)
            try:
                size = os.stat(layout.mess(n)).st_size
                bouncing = os.path.exists(layout.bounce(n))
                with open(layout.info(n), "rb") as f:
                    sender = f.read().split(b"\0", 1)[0][1:]
                    mtime = os.fstat(f.fileno()).st_mtime
            except OSError:
                warn(f"qmail-qread: warning: trouble with #{n}")
                continue
            stats = b"%s GMT  #%d  %d  <%s> " % (date822(mtime)[:-6], n, size, sender)
            if bouncing:
                stats += b" bouncing"
            out.append(_printable(stats) + b"\n")
            for channel in ("local", "remote"):
                try:
                    with open(layout.channel(channel, n), "rb") as f:
                        data = f.read()
                except FileNotFoundError:
                    continue
                except OSError:
                    warn(f"qmail-qread: warning: trouble with #{n}")
                    continue
                for rec in data.split(b"\0")[:-1]:
                    if rec[:1] not in (b"T", b"D"):
                        continue
                    out.append((b"  done" if rec[:1] == b"D" else b"")
                               + b"\t%s\t" % channel.encode() + _printable(rec[1:]) + b"\n")
    return b"".join(out)


def main(argv: list[str], env: ProgramEnv) -> int:
    if argv[1:] == ["--help"]:
        env.stdout.write(b"qmail-qread: usage: qmail-qread\n")
        return 0
    try:
        text = listing(env.home.queue, env.warn)
    except OSError as e:
        env.warn(f"qmail-qread: fatal: unable to opendir info: {e.strerror}")
        return 111
    env.stdout.write(text)
    env.stdout.flush()
    return 0
