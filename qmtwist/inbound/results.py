"""
The results of one message's checks and the C{Authentication-Results} header that reports them
(RFC 8601, built with authres; docs/behaviour/authentication.md 22.5); pure.

Every value in the header comes from the network (an envelope sender, a HELO name, a From
domain, a signature's d= and s=): L{value} keeps only the characters of an RFC 5322 atom, dot
and C{@} and turns every other byte into C{?}, so nothing a client sends can end the header,
open a comment or add a result. Comments are our own fixed texts. authres writes the field;
it is folded before each result, one per line, with a tab.
"""

from __future__ import annotations

import authres
import authres.dmarc
from attrs import frozen

_ATEXT = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                   b"!#$%&'*+-/=?^_`{|}~.@")
_COMMENT = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:=/_+-@")

#: RFC 8601 2.7 result values, by method
SPF_RESULTS = ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")
DKIM_RESULTS = ("none", "pass", "fail", "policy", "neutral", "temperror", "permerror")
DMARC_RESULTS = ("none", "pass", "fail", "temperror", "permerror")


def value(text: bytes | str | None, limit: int = 255) -> str:
    """C{text} as a header value: atom characters, dot and C{@} kept, anything else C{?}."""
    if text is None:
        return ""
    raw = text.encode("utf-8", "replace") if isinstance(text, str) else text
    return bytes(c if c in _ATEXT else 0x3F for c in raw[:limit]).decode("ascii")


def comment(text: str | None) -> str | None:
    """One of our comments, with anything that could close or nest it replaced."""
    if not text:
        return None
    return bytes(c if c in _COMMENT else 0x3F for c in text.encode("utf-8", "replace")[:200]
                 ).decode("ascii")


@frozen
class SPFCheck:
    """
    One SPF check (RFC 7208).

    @ivar identity: C{"mailfrom"} (the envelope sender) or C{"helo"} (the HELO name).
    @ivar subject: the sender address or the HELO name that was checked.
    @ivar domain: the domain whose record was evaluated (DMARC's SPF domain).
    """

    result: str
    identity: str
    subject: bytes
    domain: str = ""
    comment: str | None = None


@frozen
class DKIMCheck:
    """One DKIM signature's result (RFC 6376); no signature at all is C{result="none"}."""

    result: str
    domain: str | None = None
    selector: str | None = None
    comment: str | None = None


@frozen
class DMARCCheck:
    """
    The DMARC evaluation (RFC 7489).

    @ivar fromDomain: the RFC5322.From domain (L{None} when there is not exactly one).
    @ivar policy: the published C{p} (or C{sp} for a subdomain), L{None} without a record.
    @ivar disposition: what the policy asks for this message (C{none}, C{quarantine},
        C{reject}).
    """

    result: str
    fromDomain: str | None = None
    policy: str | None = None
    disposition: str | None = None
    comment: str | None = None

    @property
    def rejects(self) -> bool:
        """A DMARC failure whose policy is applied with C{reject} (control/dmarcreject)."""
        return self.result == "fail" and self.disposition == "reject"


@frozen
class Verification:
    """All results for one message, in header order: SPF, DKIM, DMARC."""

    spf: tuple[SPFCheck, ...]
    dkim: tuple[DKIMCheck, ...]
    dmarc: DMARCCheck


def _spf(c: SPFCheck) -> authres.AuthenticationResult:
    subject = value(c.subject)
    if c.identity == "helo":
        return authres.SPFAuthenticationResult(
            result=c.result, result_comment=comment(c.comment), smtp_helo=subject or "unknown")
    return authres.SPFAuthenticationResult(
        result=c.result, result_comment=comment(c.comment), smtp_mailfrom=subject or "unknown")


def _dkim(c: DKIMCheck) -> authres.AuthenticationResult:
    return authres.DKIMAuthenticationResult(
        result=c.result, result_comment=comment(c.comment),
        header_d=value(c.domain) or None, header_s=value(c.selector) or None)


def _dmarc(c: DMARCCheck) -> authres.AuthenticationResult:
    note = c.comment
    if c.policy is not None:
        note = f"p={c.policy} dis={c.disposition or 'none'}" + (f" {note}" if note else "")
    return authres.dmarc.DMARCAuthenticationResult(
        result=c.result, result_comment=comment(note),
        header_from=value(c.fromDomain) or None)


def header(authservId: bytes, v: Verification) -> bytes:
    """
    C{Authentication-Results: ME;} and one folded line per result, ending in LF.

    @param authservId: C{control/me}, our authserv-id.
    """
    results = [_spf(c) for c in v.spf] + [_dkim(c) for c in v.dkim] + [_dmarc(v.dmarc)]
    h = authres.AuthenticationResultsHeader(authserv_id=value(authservId), results=results)
    # no value or comment can hold a ";" (L{value}, L{comment}): each "; " separates results
    return (str(h).replace("; ", ";\n\t") + "\n").encode("ascii", "replace")
