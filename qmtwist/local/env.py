"""
The values qmail-local computes once per delivery: Delivered-To, Return-Path and From_ lines
(docs/behaviour/local.md 4.7, 4.9), NEWSENDER (4.6) and the environment of programs (4.5). Pure functions.
"""

from __future__ import annotations

import os
from typing import Mapping

from qmtwist.received import ctime, deliveredTo, returnPath


def ufline(sender: bytes, when: float) -> bytes:
    """C{From SENDER CTIME}: the mbox separator line, with its LF."""
    s = sender.replace(b" ", b"-").replace(b"\t", b"-").replace(b"\n", b"-") or b"MAILER-DAEMON"
    return b"From " + s + b" " + ctime(when) + b"\n"


def dtline(local: bytes, host: bytes) -> bytes:
    """C{Delivered-To: LOCAL@HOST} with its LF."""
    return deliveredTo(local + b"@" + host)


def rpline(sender: bytes) -> bytes:
    """C{Return-Path: <SENDER>} with its LF."""
    return returnPath(sender)


def newSender(sender: bytes, local: bytes, host: bytes, owner: bool, ownerDefault: bool) -> bytes:
    """
    The envelope sender of forwarded copies (docs/behaviour/local.md 4.6).

    @param owner: C{.qmail⟨dash⟩⟨ext′⟩-owner} exists.
    @param ownerDefault: C{.qmail⟨dash⟩⟨ext′⟩-owner-default} exists.
    """
    if not sender or sender == b"#@[]":
        return sender
    if owner and ownerDefault:
        return local + b"-owner-@" + host + b"-@[]"
    if owner:
        return local + b"-owner@" + host
    return sender


def hostCuts(host: bytes) -> tuple[bytes, bytes, bytes]:
    """HOST2, HOST3, HOST4: HOST cut before its last, second-to-last, third-to-last dot."""
    out = []
    cur = host
    for _ in range(3):
        if b"." in cur:
            cur = cur.rsplit(b".", 1)[0]
        out.append(cur)
    return out[0], out[1], out[2]


def extCuts(ext: bytes) -> tuple[bytes, bytes, bytes]:
    """EXT2, EXT3, EXT4: EXT after its first, second, third C{-} (empty when missing)."""
    out = []
    cur = ext
    for _ in range(3):
        cur = cur.split(b"-", 1)[1] if b"-" in cur else b""
        out.append(cur)
    return out[0], out[1], out[2]


def _clean(v: bytes) -> bytes:
    # environment values cannot hold NUL; the queue never lets one through, be safe anyway
    return v.replace(b"\0", b"_")


def programEnv(
    base: Mapping[bytes, bytes],
    *,
    sender: bytes,
    newsender: bytes,
    local: bytes,
    host: bytes,
    user: bytes,
    home: str,
    ext: bytes,
    default: bytes | None,
    dt: bytes,
    rp: bytes,
    uf: bytes,
    binDir: str,
) -> dict[bytes, bytes]:
    """
    The environment of a program delivery (docs/behaviour/local.md 4.5): C{base} (the daemon's) plus qmail's
    variables; C{PATH} starts with C{HOME/bin}.
    """
    env = dict(base)
    h2, h3, h4 = hostCuts(host)
    e2, e3, e4 = extCuts(ext)
    env.update({
        b"SENDER": sender, b"NEWSENDER": newsender, b"RECIPIENT": local + b"@" + host,
        b"USER": user, b"HOME": os.fsencode(home), b"HOST": host, b"HOST2": h2, b"HOST3": h3,
        b"HOST4": h4, b"LOCAL": local, b"EXT": ext, b"EXT2": e2, b"EXT3": e3, b"EXT4": e4,
        b"DTLINE": dt, b"RPLINE": rp, b"UFLINE": uf,
    })
    env.pop(b"DEFAULT", None)
    if default is not None:
        env[b"DEFAULT"] = default
    path = base.get(b"PATH", b"/usr/local/bin:/usr/bin:/bin")
    env[b"PATH"] = os.fsencode(binDir) + b":" + path
    return {k: _clean(v) for k, v in env.items()}


def daemonEnv() -> dict[bytes, bytes]:
    """The daemon's environment as bytes, without what listeners' rules set."""
    env = dict(os.environb)
    for k in list(env):
        if k.startswith(b"TCP") or k in (b"RELAYCLIENT", b"PROTO"):
            del env[k]
    return env
