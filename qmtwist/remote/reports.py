"""
The report texts of remote delivery, shared by the SMTP and the QMTP client and the agent
(docs/behaviour/remote.md 11.3-11.4, qmtp.md 9.3).

Peer text is hostile: L{clean} makes it safe for the log and the bounce, L{said} quotes it as
qmail-remote does (C{Remote host said: ...}), L{printable} shows a host name. The fixed texts are
qmail's, the C{SMTP} in L{NO_CONNECTION} included for QMTP routes.
"""

from __future__ import annotations

import unicodedata

from qmtwist.delivery import Outcome, Report

MAX_TEXT = 5000  # qmail's HUGESMTPTEXT

UNREADABLE = "Unable to read message. (#4.3.0)"
NO_CONNECTION = "Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)"
STOPPING = "Remote delivery interrupted by shutdown. (#4.3.0)"


def clean(text: bytes) -> bytes:
    """
    Peer text for a report: decoded tolerantly as UTF-8, NUL as C{?} (as qmail), other control
    characters but LF and TAB as C{?}, capped at L{MAX_TEXT} bytes.
    """
    chars = []
    for c in text[:MAX_TEXT].decode("utf-8", "replace"):
        if c in "\n\t":
            chars.append(c)
        elif unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            chars.append("?")
        else:
            chars.append(c)
    return "".join(chars).encode("utf-8")


def said(text: bytes) -> bytes:
    """C{Remote host said: ⟨reply⟩} lines, or nothing for an empty reply."""
    text = clean(text)
    if not text:
        return b""
    if not text.endswith(b"\n"):
        text += b"\n"
    return b"Remote host said: " + text


def report(outcome: Outcome, text: bytes) -> Report:
    """A L{Report} of C{outcome} with C{text}."""
    return {
        Outcome.SUCCESS: Report.success,
        Outcome.DEFERRAL: Report.deferral,
        Outcome.FAILURE: Report.failure,
    }[outcome](text)


def connectionDied(ip: str, sent: bool = False) -> Report:
    """
    The deferral for a connection that ended or timed out before the answer came
    (docs/behaviour/remote.md 11.3); C{sent}: the whole message had gone out, so the peer may
    have taken it.
    """
    dup = "Possible duplicate! " if sent else ""
    return Report.deferral(f"Connected to {ip} but connection died. {dup}(#4.4.2)")


def printable(name: bytes) -> str:
    """A DNS-supplied or user-supplied name for a report: printable ASCII, anything else C{?}."""
    return "".join(c if 32 < ord(c) < 127 else "?" for c in name.decode("latin-1"))
