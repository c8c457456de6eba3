"""
SPF (pyspf), DKIM (dkimpy) and DMARC (dmarc with publicsuffixlist) for one message, on a worker
thread, every lookup through a L{ThreadDNS} (docs/behaviour/authentication.md 22.3).

Nothing here raises for what the network sends: a DNS failure is C{temperror}, a broken record
or signature its RFC 8601 result, and anything unexpected inside a library C{temperror} (with
the traceback logged), so a check can never lose or refuse a message by accident.
"""

from __future__ import annotations

import email.utils
import random
import re
from typing import Any

import dkim
import dmarc
import spf
from dkim.util import parse_tag_value
from publicsuffixlist import PublicSuffixList
from twisted.logger import Logger
from twisted.python.failure import Failure

from qmtwist.inbound import message
from qmtwist.inbound.dns import DNSTempError, ThreadDNS, using
from qmtwist.inbound.results import DKIMCheck, DMARCCheck, SPFCheck, Verification

log = Logger(namespace="qmtwist.inbound")

_LABEL = re.compile(rb"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$")
_DMARC1 = re.compile(rb"^v\s*=\s*DMARC1\s*(;|$)")
_psl: PublicSuffixList | None = None


def logFailure(reactor: Any, text: str) -> None:
    """Log the exception being handled, with its traceback, from the reactor thread."""
    reactor.callFromThread(log.failure, text, Failure())


def isDomain(name: bytes) -> bool:
    """Whether C{name} is a plausible domain name (dotted labels), not an address literal."""
    labels = name.rstrip(b".").split(b".")
    return len(name) <= 253 and len(labels) >= 2 and all(_LABEL.match(x) for x in labels)


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def orgDomain(domain: str) -> str:
    """The organizational domain (RFC 7489 3.2) from the public suffix list shipped with
    publicsuffixlist (loaded once)."""
    global _psl
    if _psl is None:
        _psl = PublicSuffixList()
    return _psl.privatesuffix(domain) or domain


class _OrgDomains:
    """The C{publicsuffix} object the dmarc library asks for organizational domains."""

    def get_public_suffix(self, domain: str) -> str:
        return orgDomain(domain)


# -- SPF ----------------------------------------------------------------------------------


def _spfQuery(resolver: ThreadDNS, ip: str, sender: str, helo: str) -> tuple[str, str | None]:
    try:
        result, _code, _text = spf.query(i=ip, s=sender, h=helo, querytime=0).check()
    except Exception:
        logFailure(resolver.reactor, "SPF check failed inside pyspf")
        return "temperror", "internal error"
    return str(result), None


def checkSPF(resolver: ThreadDNS, ip: bytes, sender: bytes, helo: bytes | None
             ) -> tuple[SPFCheck, ...]:
    """
    RFC 7208 for the envelope sender (C{smtp.mailfrom}) and the HELO name (C{smtp.helo}); for
    the null sender the HELO identity is the only one (RFC 7208 2.4).
    """
    heloName = helo or b""
    with using(resolver):
        if isDomain(heloName):
            result, note = _spfQuery(resolver, _text(ip), "", _text(heloName))
            heloCheck = SPFCheck(result, "helo", heloName, _text(heloName).lower().rstrip("."),
                                 note)
        else:
            heloCheck = SPFCheck("none", "helo", heloName, "", "HELO is not a domain name")
        if not sender:
            return (heloCheck,)
        domain = sender.rpartition(b"@")[2]
        if b"@" not in sender or not isDomain(domain):
            return (SPFCheck("none", "mailfrom", sender, "", "no sender domain"), heloCheck)
        result, note = _spfQuery(resolver, _text(ip), _text(sender), _text(heloName) or "unknown")
        return (SPFCheck(result, "mailfrom", sender, _text(domain).lower().rstrip("."), note),
                heloCheck)


# -- DKIM ---------------------------------------------------------------------------------


class _KeyLookup:
    """dkimpy's C{dnsfunc}: the key record through our resolver, remembering what happened."""

    def __init__(self, resolver: ThreadDNS) -> None:
        self.resolver = resolver
        self.temporary = False
        self.missing = False

    def __call__(self, name: bytes | str, timeout: Any = None) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        try:
            records = self.resolver.txt(text)
        except DNSTempError as e:
            self.temporary = True
            raise dkim.DnsTimeoutError(str(e))
        if not records:
            self.missing = True
            return None
        return records[0]


def _signatureIds(value: bytes) -> tuple[str | None, str | None]:
    try:
        tags = parse_tag_value(value.replace(b"\r", b"").replace(b"\n", b""))
    except Exception:
        return None, None
    d, s = tags.get(b"d"), tags.get(b"s")
    return (_text(d).strip().lower() if d else None), (_text(s).strip() if s else None)


def checkDKIM(resolver: ThreadDNS, q: message.Queued, scan: message.HeaderScan
              ) -> tuple[DKIMCheck, ...]:
    """One result per DKIM-Signature field (at most L{message.MAX_SIGNATURES}), top first."""
    if not scan.signatures:
        return (DKIMCheck("none"),)
    ids = [_signatureIds(v) for v in scan.signatures]
    data = message.whole(q)
    if data is None:
        return tuple(DKIMCheck("neutral", d, s, "message too large to verify") for d, s in ids)
    try:
        verifier = dkim.DKIM(data, logger=None, minkey=1024)
    except dkim.DKIMException:  # a header dkimpy cannot parse
        return tuple(DKIMCheck("neutral", d, s, "invalid signature") for d, s in ids)
    out = []
    for idx, (d, s) in enumerate(ids):
        key = _KeyLookup(resolver)
        try:
            ok = verifier.verify(idx=idx, dnsfunc=key)
        except dkim.ValidationError as e:
            bodyHash = "body hash mismatch" in str(e)
            out.append(DKIMCheck("fail" if bodyHash else "neutral", d, s,
                                 "body hash mismatch" if bodyHash else "invalid signature"))
            continue
        except dkim.DKIMException:
            out.append(DKIMCheck("neutral", d, s, "invalid signature"))
            continue
        except Exception:
            logFailure(resolver.reactor, "DKIM verification failed inside dkimpy")
            out.append(DKIMCheck("temperror", d, s, "internal error"))
            continue
        if ok:
            out.append(DKIMCheck("pass", d, s))
        elif key.temporary:
            out.append(DKIMCheck("temperror", d, s, "key lookup failed"))
        elif key.missing:
            out.append(DKIMCheck("permerror", d, s, "no key"))
        else:
            out.append(DKIMCheck("fail", d, s, "signature did not verify"))
    return tuple(out)


# -- DMARC --------------------------------------------------------------------------------


def fromDomain(values: list[bytes]) -> str | None:
    """The RFC5322.From domain: L{None} unless there is one From field with one address."""
    if len(values) != 1:
        return None
    text = _text(values[0].replace(b"\r", b"").replace(b"\n", b""))
    addresses = [a for _n, a in email.utils.getaddresses([text]) if a]
    if len(addresses) != 1 or "@" not in addresses[0]:
        return None
    domain = addresses[0].rpartition("@")[2].strip().rstrip(".").lower()
    try:
        ascii_ = domain.encode("idna")
    except UnicodeError:
        return None
    return ascii_.decode("ascii") if isDomain(ascii_) else None


def _policyRecord(resolver: ThreadDNS, domain: str) -> str | None:
    records = [r for r in resolver.txt("_dmarc." + domain) if _DMARC1.match(r)]
    return records[0].decode("ascii", "replace") if len(records) == 1 else None


_LOWER = {"reject": "quarantine", "quarantine": "none"}
_SPF_VALUES = {r.value for r in dmarc.SPFResult}
_DKIM_VALUES = {r.value for r in dmarc.DKIMResult}


def checkDMARC(resolver: ThreadDNS, scan: message.HeaderScan, spfChecks: tuple[SPFCheck, ...],
               dkimChecks: tuple[DKIMCheck, ...]) -> DMARCCheck:
    """RFC 7489: policy discovery (the From domain, then its organizational domain),
    identifier alignment of the SPF and DKIM passes, the disposition (with C{pct})."""
    domain = fromDomain(scan.fromValues)
    if domain is None:
        return DMARCCheck("permerror", comment="no single From domain")
    org = orgDomain(domain)
    try:
        record, at = _policyRecord(resolver, domain), domain
        if record is None and org != domain:
            record, at = _policyRecord(resolver, org), org
    except DNSTempError:
        return DMARCCheck("temperror", domain, comment="policy lookup failed")
    if record is None:
        return DMARCCheck("none", domain)
    evaluator = dmarc.DMARC(publicsuffix=_OrgDomains())
    try:
        policy = evaluator.parse_record(record, domain, org if at != domain else None,
                                        strict=False)
    except dmarc.Error:
        return DMARCCheck("permerror", domain, comment="invalid policy record")
    mailfrom = spfChecks[0]  # the MAIL FROM identity (the HELO one for the null sender)
    spfAuth = (dmarc.SPF(mailfrom.domain, dmarc.SPFResult(mailfrom.result))
               if mailfrom.domain and mailfrom.result in _SPF_VALUES else None)
    dkimAuth = [dmarc.DKIM(c.domain, dmarc.DKIMResult(c.result)) for c in dkimChecks
                if c.domain and c.result in _DKIM_VALUES]
    published = (policy.sp if at != domain and policy.sp is not dmarc.DMARCDisposition.UNSPECIFIED
                 else policy.p).value
    try:
        res = evaluator.get_result(policy, auth_results=dmarc.AuthResults(spf=spfAuth,
                                                                           dkim=dkimAuth))
    except Exception:
        logFailure(resolver.reactor, "DMARC evaluation failed inside dmarc")
        return DMARCCheck("temperror", domain, comment="internal error")
    if res.result is dmarc.DMARCResult.PASS:
        return DMARCCheck("pass", domain, published, "none")
    if mailfrom.result == "temperror" or any(c.result == "temperror" for c in dkimChecks):
        return DMARCCheck("temperror", domain, published, "none", "SPF or DKIM temporary error")
    disposition = res.disposition.value or "none"
    if disposition in _LOWER and policy.pct < 100 and random.random() * 100 >= policy.pct:
        disposition = _LOWER[disposition]  # RFC 7489 6.6.4: outside pct, the next policy down
    return DMARCCheck("fail", domain, published, disposition)


def verify(resolver: ThreadDNS, q: message.Queued, ip: bytes, sender: bytes,
           helo: bytes | None) -> Verification:
    """Every check for the message in C{q}, in the order of the header."""
    scan = message.scan(q)
    spfChecks = checkSPF(resolver, ip, sender, helo)
    dkimChecks = checkDKIM(resolver, q, scan)
    return Verification(spfChecks, dkimChecks, checkDMARC(resolver, scan, spfChecks, dkimChecks))


def unverified(note: str, sender: bytes) -> Verification:
    """The results when the checks themselves failed: C{temperror} for each method."""
    return Verification((SPFCheck("temperror", "mailfrom", sender, "", note),),
                        (DKIMCheck("temperror", comment=note),),
                        DMARCCheck("temperror", comment=note))
