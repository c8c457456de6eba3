"""
The result -> Authentication-Results mapping (qmtwist/inbound/results.py), the From domain DMARC
uses, the DMARC refusal's reply and the policy hook (docs/behaviour/authentication.md 22.5, 22.6).
"""

from __future__ import annotations

import authres
import pytest

from qmtwist.control import Control
from qmtwist.inbound.checks import fromDomain, isDomain
from qmtwist.inbound.results import (
    DKIMCheck, DMARCCheck, SPFCheck, Verification, comment, header, value)
from qmtwist.inbound.writer import DMARCRejected
from qmtwist.policy import SessionPolicy
from qmtwist.smtp.replies import queueErrorReply

NO_DKIM = (DKIMCheck("none"),)
NO_DMARC = DMARCCheck("none", "sender.example")


def one(spf=(), dkim=NO_DKIM, dmarc=NO_DMARC) -> bytes:
    return header(b"mx.test", Verification(tuple(spf), tuple(dkim), dmarc))


@pytest.mark.parametrize("result", ["pass", "fail", "softfail", "neutral", "none", "temperror",
                                    "permerror"])
def test_spf_result_each_value(result):
    h = one([SPFCheck(result, "mailfrom", b"a@sender.example", "sender.example")])
    assert h == (b"Authentication-Results: mx.test;\n\tspf=" + result.encode() +
                 b" smtp.mailfrom=a@sender.example;\n\tdkim=none;\n"
                 b"\tdmarc=none header.from=sender.example\n")


def test_helo_identity_and_null_sender():
    h = one([SPFCheck("pass", "helo", b"client.example", "client.example")])
    assert b"\tspf=pass smtp.helo=client.example;\n" in h
    assert b"smtp.mailfrom" not in h
    # no HELO at all: still a value
    assert b"\tspf=none (HELO is not a domain name) smtp.helo=unknown;\n" in one(
        [SPFCheck("none", "helo", b"", "", "HELO is not a domain name")])


def test_dkim_results():
    h = one(dkim=[DKIMCheck("pass", "sender.example", "sel"),
                  DKIMCheck("fail", "other.example", "s2", "body hash mismatch"),
                  DKIMCheck("neutral", "big.example", "s", "message too large to verify")])
    assert (b"\tdkim=pass header.d=sender.example header.s=sel;\n"
            b"\tdkim=fail (body hash mismatch) header.d=other.example header.s=s2;\n"
            b"\tdkim=neutral (message too large to verify) header.d=big.example header.s=s;\n"
            in h), h


def test_dmarc_results():
    assert one(dmarc=DMARCCheck("pass", "sender.example", "reject", "none")).endswith(
        b"\tdmarc=pass (p=reject dis=none) header.from=sender.example\n")
    failed = DMARCCheck("fail", "sender.example", "reject", "reject")
    assert one(dmarc=failed).endswith(
        b"\tdmarc=fail (p=reject dis=reject) header.from=sender.example\n")
    assert failed.rejects
    assert not DMARCCheck("fail", "sender.example", "quarantine", "quarantine").rejects
    assert not DMARCCheck("temperror", "sender.example", "reject", "none").rejects
    assert one(dmarc=DMARCCheck("permerror", comment="no single From domain")).endswith(
        b"\tdmarc=permerror (no single From domain)\n")


def test_hostile_values_cannot_break_the_field():
    """CR, LF, ';', '(' and spaces from the client become '?': one field, no extra result."""
    h = one([SPFCheck("fail", "mailfrom", b"x;dkim=pass\r\nX-Evil: 1@a (b)", "a"),
             SPFCheck("none", "helo", b"h;\n dmarc=pass", "")],
            dkim=[DKIMCheck("pass", "d.example; dmarc=pass", "s(1)")])
    assert h.count(b"\n") == 5 and b"\r" not in h
    assert b"X-Evil" in h and b"\nX-Evil" not in h
    assert b"smtp.mailfrom=x?dkim=pass??X-Evil??1@a??b?;" in h
    # authres quotes a value that is not a token
    assert b'smtp.helo="h???dmarc=pass";' in h
    assert b'header.d="d.example??dmarc=pass" header.s="s?1?";' in h
    parsed = authres.parse(h.decode().replace("\n\t", " ").strip())
    assert [r.method for r in parsed.results] == ["spf", "spf", "dkim", "dmarc"]


def test_value_and_comment_helpers():
    assert value(b"Alice.B+tag@Example.COM") == "Alice.B+tag@Example.COM"
    assert value("\u00e9x") == "??x"
    assert value(None) == ""
    assert comment("a (b) c;d\\") == "a ?b? c?d?"
    assert comment(None) is None


def test_authserv_id_is_me_lowercased():
    assert one().startswith(b"Authentication-Results: mx.test;\n")
    assert header(b"MX.Example", Verification((), NO_DKIM, NO_DMARC)).startswith(
        b"Authentication-Results: mx.example;\n")


@pytest.mark.parametrize("values, domain", [
    ([b" Bob <bob@Sender.Example>\n"], "sender.example"),
    ([b" bob@sender.example."], "sender.example"),
    ([b" =?utf-8?q?B=C3=B6b?= <bob@sender.example>"], "sender.example"),
    ([b" a@one.example, b@two.example"], None),
    ([b" a@one.example", b" b@one.example"], None),
    ([], None),
    ([b" undisclosed"], None),
    ([b" x@[127.0.0.1]"], None),
])
def test_from_domain(values, domain):
    assert fromDomain(values) == domain


def test_is_domain():
    assert isDomain(b"client.example") and isDomain(b"a-b.c_d.example.")
    assert not isDomain(b"[127.0.0.1]") and not isDomain(b"localhost")
    assert not isDomain(b"a..example") and not isDomain(b"-a.example")


def test_dmarc_refusal_reply():
    assert queueErrorReply(DMARCRejected("sender.example")) == (
        b"550 5.7.1 sorry, the DMARC policy of sender.example rejects this message (#5.7.1)")


def test_policy_verifies_only_non_relay_clients():
    assert SessionPolicy.fromEnv(Control(), {}).verifyInbound
    assert not SessionPolicy.fromEnv(Control(), {"RELAYCLIENT": b""}).verifyInbound
    assert not SessionPolicy.fromEnv(Control(), {"RELAYCLIENT": b"@fixme"}).verifyInbound
