"""
What a listener session accepts: one policy for the SMTP and QMTP servers (and any later
listener that takes envelopes from the network); pure.

L{SessionPolicy.fromEnv} reads the session environment (docs/behaviour/smtp.md 7.1) and the
connection's control snapshot once, when the connection is accepted. The servers then ask it
about each sender and recipient and only turn its verdict into their own reply texts, so the
rule that keeps qmtwist from being an open relay (RELAYCLIENT, else rcpthosts and
morercpthosts, docs/behaviour/smtp.md 7.4, 7.5) is written here and nowhere else.

What differs between the protocols is a L{Dialect}: how long an address may be (and whether
RELAYCLIENT counts towards it) and whether badmailfrom applies (docs/behaviour/smtp.md 7.2,
7.6; docs/behaviour/qmtp.md 9.2). C{maxrcpt} is counted by the servers, which hold the
transaction: SMTP counts accepted recipients only, QMTP every recipient of a package
(docs/behaviour/smtp.md 7.11, docs/behaviour/qmtp.md 9.2); both ask L{SessionPolicy.roomFor}.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Mapping, Union

from attrs import evolve, frozen

from qmtwist.address import unstorable
from qmtwist.rcpthosts import RcptHosts

if TYPE_CHECKING:
    from qmtwist.control import Control


class Refusal(enum.Enum):
    """Why an address is refused; each server has its own text for each reason."""

    #: too long for the dialect, or NUL, CR or LF (SMTP 555, QMTP D#5.1.3 / D#5.1.7)
    UNSTORABLE = "unstorable"
    #: SMTP C{MAIL ... SIZE=n} over databytes (552)
    TOO_BIG = "databytes"
    #: the transaction's sender matched badmailfrom (553, docs/behaviour/smtp.md 7.6)
    BAD_MAIL_FROM = "badmailfrom"
    #: no RELAYCLIENT and the domain is not allowed (docs/behaviour/smtp.md 7.5)
    NOT_IN_RCPTHOSTS = "rcpthosts"
    #: the transaction already holds maxrcpt recipients (docs/behaviour/smtp.md 7.11)
    TOO_MANY = "maxrcpt"


@frozen
class Accepted:
    """
    An acceptable address.

    @ivar address: what goes into the envelope (a recipient with RELAYCLIENT appended).
    @ivar barred: a sender that matched badmailfrom: accepted, but every recipient of its
        transaction is then refused (docs/behaviour/smtp.md 7.6).
    """

    address: bytes
    barred: bool = False


Verdict = Union[Accepted, Refusal]


@frozen
class Dialect:
    """
    The protocol's own limits.

    @ivar addressLimit: an address this long or longer is refused.
    @ivar limitCountsRelay: the recipient's length includes RELAYCLIENT (QMTP).
    @ivar badmailfrom: C{control/badmailfrom} applies (SMTP).
    """

    name: str
    addressLimit: int
    limitCountsRelay: bool
    badmailfrom: bool


#: qmail-smtpd: 555 for a parsed address of 900 bytes or more (docs/behaviour/smtp.md 7.2).
SMTP = Dialect("smtp", 900, limitCountsRelay=False, badmailfrom=True)
#: qmail-qmtpd: 1000 bytes with RELAYCLIENT, no badmailfrom (docs/behaviour/qmtp.md 9.2).
QMTP = Dialect("qmtp", 1000, limitCountsRelay=True, badmailfrom=False)


def envDatabytes(value: bytes | None, controlValue: int) -> int:
    """
    The message size limit of a session (docs/behaviour/smtp.md 7.1): without C{DATABYTES}
    C{control/databytes}; with it, its leading decimal digits (C{100k} is 100), and 0, i.e. no
    limit, when it has none (C{abc}, empty), as qmail reads it.
    """
    if value is None:
        return controlValue
    value = value.strip()
    n = 0
    while n < len(value) and 48 <= value[n] <= 57:
        n += 1
    return int(value[:n]) if n else 0


def badMailFrom(sender: bytes, entries: tuple[bytes, ...]) -> bool:
    """Whether C{sender} matches a badmailfrom entry (address or C{@host}), ignoring case
    (docs/behaviour/smtp.md 7.6)."""
    if not entries:
        return False
    s = sender.lower()
    at = s.rfind(b"@")
    domain = s[at:] if at >= 0 else None
    for e in entries:
        e = e.lower()
        if e == s or (domain is not None and e == domain):
            return True
    return False


@frozen
class SessionPolicy:
    """
    The acceptance rules of one session.

    @ivar databytes: the size limit of a message as stored; 0 = no limit.
    @ivar maxrcpt: the most recipients a message may have; 0 = no limit.
    @ivar relayclient: C{RELAYCLIENT} (L{None} when unset; set, even empty, it replaces the
        rcpthosts check and is appended to every recipient).
    @ivar user: the name an SMTP AUTH proved (docs/behaviour/submission.md 16.3), else L{None};
        an authenticated session relays as with an empty C{RELAYCLIENT}.
    """

    dialect: Dialect
    databytes: int
    maxrcpt: int
    relayclient: bytes | None
    rcpthosts: RcptHosts
    badmailfrom: tuple[bytes, ...] = ()
    user: bytes | None = None

    @classmethod
    def fromEnv(cls, control: Control, env: Mapping[str, bytes],
                dialect: Dialect = SMTP) -> SessionPolicy:
        """The policy for a session with environment C{env} under the snapshot C{control}."""
        return cls(
            dialect=dialect,
            databytes=envDatabytes(env.get("DATABYTES"), control.databytes),
            maxrcpt=control.maxrcpt,
            relayclient=env.get("RELAYCLIENT"),
            rcpthosts=RcptHosts.fromControl(control),
            badmailfrom=tuple(control.badmailfrom) if dialect.badmailfrom else (),
        )

    def sender(self, address: bytes, size: int | None = None) -> Verdict:
        """
        The verdict on an envelope sender; C{size} is SMTP's C{SIZE=n} (docs/behaviour/smtp.md
        7.2). A sender in badmailfrom is L{Accepted} with C{barred} set.
        """
        if len(address) >= self.dialect.addressLimit or unstorable(address):
            return Refusal.UNSTORABLE
        if size is not None and self.overDatabytes(size):
            return Refusal.TOO_BIG
        return Accepted(address, barred=badMailFrom(address, self.badmailfrom))

    def recipient(self, address: bytes, barred: bool = False, held: int = 0) -> Verdict:
        """
        The verdict on a recipient, first reason first: unstorable, a barred sender, the relay
        rule (L{relay}), then C{held} (recipients the transaction already holds) against
        maxrcpt. Pass C{held} only where refused recipients do not count (SMTP).
        """
        length = len(address)
        if self.dialect.limitCountsRelay and self.relayclient is not None:
            length += len(self.relayclient)
        if length >= self.dialect.addressLimit or unstorable(address):
            return Refusal.UNSTORABLE
        if barred:
            return Refusal.BAD_MAIL_FROM
        queued = self.relay(address)
        if queued is None:
            return Refusal.NOT_IN_RCPTHOSTS
        if not self.roomFor(held):
            return Refusal.TOO_MANY
        return Accepted(queued)

    def relay(self, recipient: bytes) -> bytes | None:
        """
        The relay rule: the recipient to queue, or L{None} when it must be refused. With
        RELAYCLIENT (even empty) rcpthosts is not consulted and its value is appended
        (docs/behaviour/smtp.md 7.4, FAQ 5.5); without it the domain must be allowed by
        rcpthosts or morercpthosts (docs/behaviour/smtp.md 7.5).
        """
        if self.relayclient is not None:
            return recipient + self.relayclient
        if self.user is not None:  # AUTH (docs/behaviour/submission.md 16.3)
            return recipient
        if self.rcpthosts.allows(recipient):
            return recipient
        return None

    @property
    def verifyInbound(self) -> bool:
        """
        Whether the session's mail gets the inbound SPF, DKIM and DMARC checks
        (docs/behaviour/authentication.md 22.1): not for a relay client (RELAYCLIENT set) nor for
        an authenticated one (L{user} set by SMTP AUTH).
        """
        return self.relayclient is None and self.user is None

    def authenticated(self, user: bytes) -> SessionPolicy:
        """This policy for a session whose client proved it is C{user}: it relays."""
        return evolve(self, user=user)

    def roomFor(self, held: int) -> bool:
        """Whether a message that already has C{held} recipients may take one more."""
        return self.maxrcpt <= 0 or held < self.maxrcpt

    def overDatabytes(self, size: int) -> bool:
        """Whether C{size} stored bytes exceed the limit (docs/behaviour/smtp.md 7.7)."""
        return self.databytes > 0 and size > self.databytes


def relayDecision(control: Control, env: Mapping[str, bytes], recipient: bytes) -> bytes | None:
    """L{SessionPolicy.relay} for a session with environment C{env} under C{control}."""
    return SessionPolicy.fromEnv(control, env).relay(recipient)
