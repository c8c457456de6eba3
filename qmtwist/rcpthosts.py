"""
Which recipients an SMTP or QMTP server accepts from a client without RELAYCLIENT (docs/behaviour/smtp.md
7.4, 7.5).

qmail-smtpd's rcpthosts.c: the domain after the last C{@}, lower-cased, is allowed when it or a
suffix of it starting with a dot is listed in C{rcpthosts} or C{morercpthosts}. A recipient without
C{@} is always allowed.

Deviation [qmtwist]: when C{rcpthosts} is missing qmail accepts everything (an open relay);
qmtwist then accepts only C{locals} and the domains of C{virtualdomains}, and the caller logs
L{MISSING_WARNING}.
"""

from __future__ import annotations

from attrs import frozen

from qmtwist.control import Control

MISSING_WARNING = "warning: control/rcpthosts missing; accepting only local and virtual domains"


@frozen
class RcptHosts:
    """
    The allowed domains, built once per connection from a control snapshot.

    @ivar entries: lower-cased entries (C{host} or C{.suffix}).
    @ivar missing: C{control/rcpthosts} does not exist (the fallback set is in use).
    """

    entries: frozenset[bytes]
    missing: bool = False

    @classmethod
    def fromControl(cls, control: Control) -> RcptHosts:
        """The rule in force for C{control} (docs/behaviour/smtp.md 7.5)."""
        if control.rcpthosts is not None:
            return cls(frozenset(control.rcpthosts) | frozenset(control.morercpthosts))
        entries = set(control.locals)
        for key, value in control.virtualdomains.items():
            if value and b"@" not in key:
                entries.add(key.lower())
        return cls(frozenset(entries), missing=True)

    def allows(self, recipient: bytes) -> bool:
        """Whether C{recipient} (already parsed, docs/behaviour/smtp.md 7.3) may be accepted without
        RELAYCLIENT."""
        at = recipient.rfind(b"@")
        if at < 0:
            return True
        domain = recipient[at + 1:].lower()
        if domain in self.entries:
            return True
        i = domain.find(b".")
        while i >= 0:
            if domain[i:] in self.entries:
                return True
            i = domain.find(b".", i + 1)
        return False


def relayDecision(
    control: Control, env: dict[str, bytes], recipient: bytes
) -> bytes | None:
    """
    The recipient to queue, or L{None} when it must be refused (qmail's 553 rcpthosts reply).

    With C{RELAYCLIENT} in C{env} (even empty) rcpthosts is not consulted and its value is
    appended to the recipient (docs/behaviour/smtp.md 7.4, FAQ 5.5).
    """
    relay = env.get("RELAYCLIENT")
    if relay is not None:
        return recipient + relay
    if RcptHosts.fromControl(control).allows(recipient):
        return recipient
    return None
