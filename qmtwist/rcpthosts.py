"""
Which recipient domains an SMTP or QMTP server accepts from a client without RELAYCLIENT
(docs/behaviour/smtp.md 7.5): the rcpthosts/morercpthosts table. The relay rule that consults it
(RELAYCLIENT first, docs/behaviour/smtp.md 7.4) is L{qmtwist.policy.SessionPolicy.relay}.

qmail-smtpd's rcpthosts.c: the domain after the last C{@}, lower-cased, is allowed when it or a
suffix of it starting with a dot is listed in C{rcpthosts} or C{morercpthosts}. A recipient without
C{@} is always allowed.

The table is built once per control snapshot, where the snapshot is loaded
(L{qmtwist.control.Control} builds it with L{RcptHosts.build} when it is constructed), never per
RCPT or per connection: like qmail's C{morercpthosts.cdb} it is a lookup table, and a check costs
one set lookup per label of the domain however long the lists are.

Deviation [qmtwist]: when C{rcpthosts} is missing qmail accepts everything (an open relay);
qmtwist then accepts only C{locals} and the domains of C{virtualdomains}, and the caller logs
L{MISSING_WARNING}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping

from attrs import field, frozen

if TYPE_CHECKING:
    from qmtwist.control import Control

MISSING_WARNING = "warning: control/rcpthosts missing; accepting only local and virtual domains"


@frozen
class RcptHosts:
    """
    The allowed domains of one control snapshot.

    @ivar entries: lower-cased entries (C{host} or C{.suffix}), exact and wildcard in one set.
    @ivar missing: C{control/rcpthosts} does not exist (the fallback set is in use).
    """

    entries: frozenset[bytes] = field(repr=lambda e: f"<{len(e)} entries>")
    missing: bool = False

    @classmethod
    def build(cls, rcpthosts: Iterable[bytes] | None, morercpthosts: Iterable[bytes],
              locals: Iterable[bytes], virtualdomains: Mapping[bytes, bytes]) -> RcptHosts:
        """
        The table for these control values (docs/behaviour/smtp.md 7.5): C{rcpthosts} plus
        C{morercpthosts}, or, with C{rcpthosts} missing (L{None}), C{locals} and every
        C{virtualdomains} key without C{@} whose value is not empty. Costs one pass over the
        lists: call it once per snapshot.
        """
        if rcpthosts is not None:
            entries = {e.lower() for e in rcpthosts}
            entries.update(e.lower() for e in morercpthosts)
            return cls(frozenset(entries))
        fallback = {e.lower() for e in locals}
        for key, value in virtualdomains.items():
            if value and b"@" not in key:
                fallback.add(key.lower())
        return cls(frozenset(fallback), missing=True)

    @classmethod
    def fromControl(cls, control: Control) -> RcptHosts:
        """The rule in force for C{control}: the table its snapshot built (no work here)."""
        return control.rcpthostsTable

    def allows(self, recipient: bytes) -> bool:
        """Whether C{recipient} (already parsed, docs/behaviour/smtp.md 7.3) may be accepted without
        RELAYCLIENT: the domain, then each suffix of it that starts with a dot (O(labels))."""
        at = recipient.rfind(b"@")
        if at < 0:
            return True
        domain = recipient[at + 1:].lower()
        entries = self.entries
        if domain in entries:
            return True
        i = domain.find(b".")
        while i >= 0:
            if domain[i:] in entries:
                return True
            i = domain.find(b".", i + 1)
        return False

