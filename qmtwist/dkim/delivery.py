"""
The remote agent's one call into DKIM (docs/behaviour/dkim.md 18.2): sign on a thread (in the
agent's own job, L{signJob}), log, and turn a key that cannot be used into a deferral
(L{prefixOf}).
"""

from __future__ import annotations

import functools
from typing import Callable, Union

from twisted.logger import Logger

from qmtwist.context import Context
from qmtwist.control import Control
from qmtwist.dkim.sign import Signed, SigningError, signFile
from qmtwist.errors import TemporaryFailure
from qmtwist.remote.reports import UNREADABLE

log = Logger(namespace="qmail-remote")


#: What a signing job gives: the signature, or why there is none.
SignOutcome = Union[Signed, SigningError, OSError]


def signJob(ctx: Context, control: Control, messPath: str, sender: bytes
            ) -> Callable[[], SignOutcome]:
    """
    The blocking part of signing message C{messPath}, for the caller's thread job (the remote
    agent runs it in the same job as its other look at the file, one hop per delivery). Never
    raises: an unusable key or an unreadable file is returned, for L{prefixOf}.
    """
    job = functools.partial(signFile, ctx.home.control, messPath, control.me, sender,
                            ctx.reactor.seconds())

    def run() -> SignOutcome:
        try:
            return job()
        except (SigningError, OSError) as e:
            return e

    return run


def prefixOf(outcome: SignOutcome, msg: int) -> bytes:
    """
    On the reactor thread: the C{DKIM-Signature} lines to send before message C{msg}, or
    C{b""} when its From: domain (and, for our bounces, C{me}) has no key; logs what was done.

    @raise TemporaryFailure: the message is unreadable or a key cannot be used.
    """
    if isinstance(outcome, SigningError):
        log.warn("dkim: msg {msg}: {text}", msg=msg, text=outcome.text)
        raise TemporaryFailure(outcome.text) from outcome
    if isinstance(outcome, OSError):
        raise TemporaryFailure(UNREADABLE) from outcome
    if outcome.note:
        log.info("dkim: msg {msg} {note}", msg=msg, note=outcome.note)
    elif outcome.prefix:
        log.info("dkim: msg {msg} signed d={domain} s={selectors}", msg=msg,
                 domain=outcome.domain, selectors=",".join(outcome.selectors))
    return outcome.prefix
