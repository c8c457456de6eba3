"""
The remote agent's one call into DKIM (docs/behaviour/dkim.md 18.2): sign on a thread, log, and
turn a key that cannot be used into a deferral.
"""

from __future__ import annotations

import functools

from twisted.logger import Logger

from qmtwist.context import Context
from qmtwist.control import Control
from qmtwist.dkim.sign import SigningError, signFile
from qmtwist.errors import TemporaryFailure
from qmtwist.remote.reports import UNREADABLE

log = Logger(namespace="qmail-remote")


async def prefixFor(ctx: Context, control: Control, messPath: str, sender: bytes, msg: int) -> bytes:
    """
    The C{DKIM-Signature} lines to send before message C{msg}, or C{b""} when its From:
    domain (and, for our bounces, C{me}) has no key. Signing runs on C{ctx.runInThread}.

    @raise TemporaryFailure: the message is unreadable or a key cannot be used.
    """
    job = functools.partial(signFile, ctx.home.control, messPath, control.me, sender,
                            ctx.reactor.seconds())
    try:
        signed = await ctx.runInThread(job)
    except SigningError as e:
        log.warn("dkim: msg {msg}: {text}", msg=msg, text=e.text)
        raise TemporaryFailure(e.text) from e
    except OSError as e:
        raise TemporaryFailure(UNREADABLE) from e
    if signed.note:
        log.info("dkim: msg {msg} {note}", msg=msg, note=signed.note)
    elif signed.prefix:
        log.info("dkim: msg {msg} signed d={domain} s={selectors}", msg=msg,
                 domain=signed.domain, selectors=",".join(signed.selectors))
    return signed.prefix
