"""
Failures with qmail's reason text and their kind.

qmail's spawners report one letter (K done, Z retry, D bounce) plus a text; here the letter is the
exception class and the text is kept verbatim, because administrators grep logs and bounces for it.
L{QueueError} carries a qmail-queue exit code (docs/behaviour/queue.md 5.3) and maps it to qmail's C{qq} text.
"""

from __future__ import annotations

from typing import ClassVar


class MailError(Exception):
    """
    A failure with qmail's reason text, e.g. C{"Unable to chdir to maildir. (#4.2.1)"}.

    @ivar text: the reason text as it appears in the log and the bounce.
    """

    permanent: ClassVar[bool] = False

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class TemporaryFailure(MailError):
    """Retry later (qmail's C{Z})."""


class PermanentFailure(MailError):
    """Give up and bounce (qmail's C{D})."""

    permanent = True


# qmail-queue exit code -> (permanent, text), as qmail-inject, qmail-smtpd and qmail-local print them.
_QQ_TEXTS: dict[int, tuple[bool, str]] = {
    11: (True, "envelope address too long for qq (#5.1.3)"),
    115: (True, "envelope address too long for qq (#5.1.3)"),
    31: (True, "mail server permanently rejected message (#5.3.0)"),
    51: (False, "qq out of memory (#4.3.0)"),
    52: (False, "qq timeout (#4.3.0)"),
    53: (False, "qq write error or disk full (#4.3.0)"),
    54: (False, "qq read error (#4.3.0)"),
    55: (False, "qq unable to read configuration (#4.3.0)"),
    56: (False, "qq trouble making network connection (#4.3.0)"),
    61: (False, "qq trouble in home directory (#4.3.0)"),
    62: (False, "qq trouble creating files in queue (#4.3.0)"),
    63: (False, "qq trouble creating files in queue (#4.3.0)"),
    64: (False, "qq trouble creating files in queue (#4.3.0)"),
    65: (False, "qq trouble creating files in queue (#4.3.0)"),
    66: (False, "qq trouble creating files in queue (#4.3.0)"),
    71: (False, "mail server temporarily rejected message (#4.3.0)"),
    72: (False, "connection to mail server timed out (#4.4.1)"),
    73: (False, "connection to mail server rejected (#4.4.1)"),
    74: (False, "communication with mail server failed (#4.4.2)"),
    81: (False, "qq internal bug (#4.3.0)"),
    91: (False, "qq internal bug (#4.3.0)"),
}

# Symbolic names for the exit codes the queue itself produces.
QQ_ADDRESS_TOO_LONG = 11
QQ_WRITE_ERROR = 53
QQ_READ_ERROR = 54
QQ_HOME = 61
QQ_QUEUE_DIR = 62
QQ_PID = 63
QQ_MESS = 64
QQ_INTD = 65
QQ_TODO = 66
QQ_BUG = 81
QQ_ENVELOPE = 91


def qqText(code: int | None) -> tuple[bool, str]:
    """
    Translate a qmail-queue exit status into qmail's reason text.

    @param code: the exit code, or L{None} when the program was killed by a signal.
    @return: C{(permanent, text)}; the text has no leading C{D}/C{Z}.
    """
    if code is None:
        return False, "qq crashed (#4.3.0)"
    if code in _QQ_TEXTS:
        return _QQ_TEXTS[code]
    if 11 <= code <= 40:
        return True, "qq permanent problem (#5.3.0)"
    return False, "qq temporary problem (#4.3.0)"


class QueueError(MailError):
    """
    Injection failed with a qmail-queue exit code; nothing was queued.

    @ivar code: the qmail-queue exit code (docs/behaviour/queue.md 5.3).
    """

    def __init__(self, code: int, detail: str = "") -> None:
        permanent, text = qqText(code)
        super().__init__(text)
        self.code = code
        self.detail = detail
        self.isPermanent = permanent

    @property
    def permanent(self) -> bool:  # type: ignore[override]
        return self.isPermanent

    def __str__(self) -> str:
        return f"{self.text}" + (f" [{self.detail}]" if self.detail else "")


class ControlError(Exception):
    """A control file could not be read; carries qmail's alert text."""
