"""
MTA-STS (RFC 8461) for remote delivery: the C{_mta-sts} TXT record, the policy file and its MX
patterns (docs/behaviour/tls-policy.md 19.2). Pure functions and records; the fetch is
L{qmtwist.remote.stsfetch}, the cache L{qmtwist.remote.stscache}.

A policy is hostile input from the network: it is parsed strictly (RFC 8461 3.2), capped at
L{MAX_POLICY} bytes, and only ever compared with MX host names; nothing of it reaches a path.
"""

from __future__ import annotations

import re

from attrs import frozen

#: RFC 8461 3.3: a policy body is at most 64 KiB.
MAX_POLICY = 64 * 1024
#: RFC 8461 3.2: max_age at most 31557600 s (about a year).
MAX_AGE = 31557600

ENFORCE = "enforce"
TESTING = "testing"
NONE = "none"

_ID = re.compile(rb"^[A-Za-z0-9]{1,32}$")
_LABEL = re.compile(rb"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


class PolicyError(ValueError):
    """A policy file that is not a valid STSv1 policy (RFC 8461 3.2)."""


@frozen
class Policy:
    """
    One STSv1 policy.

    @ivar mode: L{ENFORCE}, L{TESTING} or L{NONE}.
    @ivar mx: the C{mx} patterns, lower case, without a trailing dot (C{*.example.net} allowed).
    @ivar maxAge: seconds the policy may be cached.
    """

    mode: str
    mx: tuple[bytes, ...]
    maxAge: int

    def matches(self, host: bytes) -> bool:
        """Whether MX host C{host} is listed by one of the policy's C{mx} patterns."""
        return any(mxMatches(p, host) for p in self.mx)


def mxMatches(pattern: bytes, host: bytes) -> bool:
    """
    RFC 8461 4.1: C{mx.example.net} matches itself only; C{*.example.net} matches exactly one
    more label on the left (C{mx1.example.net}, not C{example.net} nor C{a.b.example.net}).
    Case and one trailing dot are ignored.
    """
    pattern = pattern.lower().rstrip(b".")
    host = host.lower().rstrip(b".")
    if not pattern or not host:
        return False
    if pattern.startswith(b"*."):
        first, dot, rest = host.partition(b".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return host == pattern


def parsePolicy(body: bytes) -> Policy:
    """
    Parse an C{mta-sts.txt} body (RFC 8461 3.2): C{key: value} lines ending in LF or CRLF,
    C{version: STSv1} first, C{mode}, C{max_age}, C{mx} (repeatable; required unless the mode is
    C{none}); unknown keys are ignored, as the RFC asks.

    @raise PolicyError: the body is too large, not ASCII, or lacks a required field.
    """
    if len(body) > MAX_POLICY:
        raise PolicyError("policy larger than 64 KiB")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise PolicyError("policy is not ASCII") from None
    fields: list[tuple[str, str]] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip(" \t")
        if not line:
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise PolicyError(f"malformed line {line[:40]!r}")
        fields.append((key.strip().lower(), value.strip(" \t")))
    if not fields or fields[0] != ("version", "STSv1"):
        raise PolicyError("first line is not version: STSv1")
    mode: str | None = None
    maxAge: int | None = None
    mx: list[bytes] = []
    for key, value in fields[1:]:
        if key == "mode" and mode is None:
            if value not in (ENFORCE, TESTING, NONE):
                raise PolicyError(f"unknown mode {value[:20]!r}")
            mode = value
        elif key == "max_age" and maxAge is None:
            if not value.isdigit() or len(value) > 10:
                raise PolicyError(f"bad max_age {value[:20]!r}")
            maxAge = min(int(value), MAX_AGE)
        elif key == "mx":
            pattern = value.lower().rstrip(".").encode("ascii")
            if not _validPattern(pattern):
                raise PolicyError(f"bad mx pattern {value[:60]!r}")
            mx.append(pattern)
    if mode is None:
        raise PolicyError("no mode")
    if maxAge is None:
        raise PolicyError("no max_age")
    if not mx and mode != NONE:
        raise PolicyError("no mx")
    return Policy(mode, tuple(mx), maxAge)


def _validPattern(pattern: bytes) -> bool:
    labels = pattern.split(b".")
    if labels and labels[0] == b"*":
        labels = labels[1:]
        if len(labels) < 2:
            return False
    return bool(labels) and len(pattern) <= 253 and all(_LABEL.match(x) for x in labels)


def parseTXT(records: list[list[bytes]]) -> bytes | None:
    """
    The policy C{id} of the C{_mta-sts} TXT answer (RFC 8461 3.1), or L{None} when there is no
    valid STSv1 record: exactly one record must start with C{v=STSv1}; its strings are joined;
    fields are C{key=value} separated by C{;}; C{id} is 1-32 letters and digits.

    @param records: each TXT record's strings.
    """
    candidates = [b"".join(r) for r in records if b"".join(r).startswith(b"v=STSv1")]
    if len(candidates) != 1:
        return None
    fields = [f.strip(b" \t") for f in candidates[0].split(b";")]
    if fields[0] != b"v=STSv1":
        return None
    for f in fields[1:]:
        key, eq, value = f.partition(b"=")
        if eq and key.strip() == b"id":
            value = value.strip()
            return value if _ID.match(value) else None
    return None


def policyURL(domain: bytes) -> str:
    """C{https://mta-sts.DOMAIN/.well-known/mta-sts.txt} (RFC 8461 3.3)."""
    return "https://mta-sts." + domain.lower().rstrip(b".").decode("ascii") + \
        "/.well-known/mta-sts.txt"


def plainDomain(domain: bytes) -> bool:
    """Whether C{domain} is a host name MTA-STS can apply to (letters, digits, C{-}, dots)."""
    labels = domain.rstrip(b".").split(b".")
    return len(labels) >= 2 and all(_LABEL.match(x) for x in labels)
