"""
qmail-qread (and C{mailq}): list the messages in the queue (docs/behaviour/tools.md 13,
docs/behaviour/queue-control.md 17.8). Replaces qmail's qmail-qread.

Like qmail, it lists preprocessed messages (those with an C{info} file): one line
C{D Mon YYYY hh:mm:ss GMT  #N  BYTES  <SENDER> } (plus C{ bouncing}, and C{ held} [qmtwist]),
then each recipient as C{\\tlocal\\tADDR} or C{\\tremote\\tADDR}, prefixed by C{  done} once
delivered. Unprintable bytes are shown as C{_}. [qmtwist] A recipient not yet done is followed
by C{\\t\\tlast deferral: TEXT} when one was recorded and C{\\t\\tnext attempt: DATE GMT}.

A user who cannot read the queue asks the running daemon through its control socket instead
(L{qmtwist.ctlclient}); that listing has only the recipients not yet done.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from qmtwist.ctlclient import ControlError, ask
from qmtwist.queue import marks
from qmtwist.queue.layout import SPLIT, QueueLayout
from qmtwist.received import date822
from qmtwist.tools.base import ProgramEnv


def _printable(data: bytes) -> bytes:
    return bytes(c if 32 <= c <= 126 else 95 for c in data)


def _date(t: float) -> bytes:
    return date822(t)[:-6] + b" GMT"


def readRows(layout: QueueLayout, warn: Callable[[str], None]) -> list[dict[str, Any]]:
    """The queue read from its files, as the control socket's C{queue} answer (plus C{done})."""
    rows = []
    for i in range(SPLIT):
        for name in sorted(os.listdir(layout.sub("info", i)), key=lambda n: (len(n), n)):
            if not name.isdigit():
                continue
            n = int(name)
            try:
                st = os.stat(layout.mess(n))
                bouncing = os.path.exists(layout.bounce(n))
                with open(layout.info(n), "rb") as f:
                    sender = f.read().split(b"\0", 1)[0][1:]
                    mtime = os.fstat(f.fileno()).st_mtime
            except OSError:
                warn(f"qmail-qread: warning: trouble with #{n}")
                continue
            note = marks.readNote(layout, n, f"{st.st_mtime_ns // 1000}.P{n}")
            recipients = []
            for channel in ("local", "remote"):
                try:
                    with open(layout.channel(channel, n), "rb") as f:
                        data = f.read()
                except FileNotFoundError:
                    continue
                except OSError:
                    warn(f"qmail-qread: warning: trouble with #{n}")
                    continue
                position = 0
                for rec in data.split(b"\0")[:-1]:
                    if rec[:1] not in (b"T", b"D"):
                        continue
                    reason, noted = marks.noteFor(note, channel, position)
                    recipients.append({
                        "address": rec[1:].decode("utf-8", "replace"), "channel": channel,
                        "done": rec[:1] == b"D", "delay_reason": reason,
                        "next_attempt": noted})
                    position += 1
            rows.append({"id": n, "arrival_time": mtime, "size": st.st_size,
                         "sender": sender.decode("utf-8", "replace"), "bouncing": bouncing,
                         "held": marks.isHeld(layout, n), "recipients": recipients})
    return rows


def _text(value: str) -> bytes:
    return _printable(value.encode("utf-8", "replace"))


def formatRows(rows: list[dict[str, Any]]) -> bytes:
    """qmail-qread's listing of C{rows} (L{readRows} or the control socket's answer)."""
    out = []
    for row in rows:
        stats = b"%s  #%d  %d  <%s> " % (_date(row["arrival_time"]), row["id"], row["size"],
                                         _text(row["sender"]))
        if row.get("bouncing"):
            stats += b" bouncing"
        if row.get("held"):
            stats += b" held"
        out.append(stats + b"\n")
        for r in row["recipients"]:
            done = r.get("done", False)
            out.append((b"  done" if done else b"") + b"\t%s\t%s\n" % (
                r["channel"].encode(), _text(r["address"])))
            if done:
                continue
            if r.get("delay_reason"):
                reason = r["delay_reason"].rstrip("\n").replace("\n", " / ")
                out.append(b"\t\tlast deferral: " + _text(reason) + b"\n")
            if r.get("next_attempt") is not None:
                out.append(b"\t\tnext attempt: " + _date(r["next_attempt"]) + b"\n")
    return b"".join(out)


def listing(layout: QueueLayout, warn: Callable[[str], None]) -> bytes:
    """The whole listing as bytes; C{warn(text)} for per-message trouble."""
    return formatRows(readRows(layout, warn))


def main(argv: list[str], env: ProgramEnv) -> int:
    if argv[1:] == ["--help"]:
        env.stdout.write(b"qmail-qread: usage: qmail-qread\n")
        return 0
    try:
        text = listing(env.home.queue, env.warn)
    except PermissionError as e:
        # not allowed to read the queue: ask the daemon (docs/behaviour/queue-control.md 17.8)
        try:
            answer = ask(env.home, {"op": "queue"})
        except ControlError as c:
            env.warn(f"qmail-qread: fatal: unable to opendir info: {e.strerror}; "
                     f"and the daemon: {c}")
            return 111
        if not answer.get("ok"):
            env.warn(f"qmail-qread: fatal: {'; '.join(answer.get('errors') or ['refused'])}")
            return 111
        text = formatRows(answer.get("messages") or [])
    except OSError as e:
        env.warn(f"qmail-qread: fatal: unable to opendir info: {e.strerror}")
        return 111
    env.stdout.write(text)
    env.stdout.flush()
    return 0
