"""tcprules text format and rule selection (docs/behaviour/tcpserver.md 8.1, 8.2)."""

from __future__ import annotations

import os

import pytest

from qmtwist.tcprules import Decision, Rule, RuleSet, RulesFile, parseRules

RULES = b"""\
# comment

127.:allow,RELAYCLIENT=""
1.2.3.4:deny
1.2.3.:allow,DATABYTES='100'
1.2.3.37-53:allow,RELAYCLIENT="@fixme",X=/a,b/
1.2.3.40:allow,FIRST="exact"
=good.example:allow,HOST="exact"
=.dom.example:allow,HOST="suffix"
=:allow,HOST="any"
10.:allow,!PROTO
::1:allow,V6="yes"
2001:db8::allow,V6="prefix"
info@5.5.5.5:deny
:allow,DEFAULT="1"
"""


@pytest.fixture
def rules():
    parsed, warnings = parseRules(RULES, "smtp")
    assert warnings == []
    return RuleSet(parsed)


def test_parse_records():
    parsed, _ = parseRules(b'127.:allow,RELAYCLIENT=""\n1.2.3.37-53:allow,A="@x",B=/a,b/\t \n')
    assert parsed == [Rule("127.", True, (("RELAYCLIENT", b""),), 1),
                      Rule("1.2.3.37-53", True, (("A", b"@x"), ("B", b"a,b")), 2)]


@pytest.mark.parametrize("ip,host,allow,env", [
    ("127.0.0.1", None, True, {"RELAYCLIENT": b""}),
    ("1.2.3.4", None, False, {}),
    ("1.2.3.5", None, True, {"DATABYTES": b"100"}),
    ("1.2.3.37", None, True, {"RELAYCLIENT": b"@fixme", "X": b"a,b"}),
    ("1.2.3.53", None, True, {"RELAYCLIENT": b"@fixme", "X": b"a,b"}),
    ("1.2.3.54", None, True, {"DATABYTES": b"100"}),
    ("1.2.3.40", None, True, {"RELAYCLIENT": b"@fixme", "X": b"a,b"}),  # range line is first
    ("9.9.9.9", "good.example", True, {"HOST": b"exact"}),
    ("9.9.9.9", "GOOD.example", True, {"HOST": b"exact"}),
    ("127.0.0.1", "good.example", True, {"HOST": b"exact"}),  # =host beats an IP prefix
    ("9.9.9.9", "a.b.dom.example", True, {"HOST": b"suffix"}),
    ("9.9.9.9", "dom.example", True, {"HOST": b"any"}),
    ("9.9.9.9", "other.example", True, {"HOST": b"any"}),
    ("9.9.9.9", None, True, {"DEFAULT": b"1"}),
    ("5.5.5.5", None, True, {"DEFAULT": b"1"}),
    ("::1", None, True, {"V6": b"yes"}),
    ("2001:db8::5", None, True, {"V6": b"prefix"}),
    ("1.2.3.4", "good.example", False, {}),  # exact IP first
])
def test_match(rules, ip, host, allow, env):
    d = rules.match(ip, host)
    assert (d.allow, d.env) == (allow, env)


def test_remove_variable(rules):
    d = rules.match("10.0.0.1")
    assert d.remove == frozenset({"PROTO"})
    assert d.apply({"PROTO": b"TCP", "TCPREMOTEIP": b"10.0.0.1"}) == {"TCPREMOTEIP": b"10.0.0.1"}


def test_no_rules_allows():
    assert RuleSet([]).match("1.1.1.1") == Decision(True)
    assert not RuleSet([]).needsHostname


def test_needs_hostname(rules):
    assert rules.needsHostname
    assert not RuleSet(parseRules(b"127.:allow\n")[0]).needsHostname


@pytest.mark.parametrize("line", [
    b"127.0.0.1:allow,RELAYCLIENT", b"127.0.0.1:permit", b"127.0.0.1 allow", b"12x.:allow",
    b'1.2.3.4:allow,A="unterminated', b"1.2.3.4:allow;A='x'",
])
def test_unparsable_lines(line):
    parsed, warnings = parseRules(b"1.1.1.1:deny\n" + line + b"\n", "qmtp")
    assert [r.address for r in parsed] == ["1.1.1.1"]
    assert warnings == [f"warning: rules/qmtp line 2: unable to parse this line: {line.decode()}"]


def test_rules_file_reread_on_mtime(tmp_path):
    path = tmp_path / "smtp"
    f = RulesFile(str(path), "smtp")
    assert f.current()[0].match("127.0.0.1").env == {}
    path.write_bytes(b'127.:allow,RELAYCLIENT=""\n')
    assert f.current()[0].match("127.0.0.1").env == {"RELAYCLIENT": b""}
    path.write_bytes(b"127.:deny\n")
    os.utime(path, ns=(1, 1))
    assert not f.current()[0].match("127.0.0.1").allow
    path.unlink()
    assert f.current()[0].match("127.0.0.1").allow


def test_rule_addresses_match_case_insensitively():
    rules, warnings = parseRules(b"=Evil.Example:deny\n2001:DB8::1:deny\n:allow\n")
    assert warnings == []
    rs = RuleSet(rules)
    assert not rs.match("9.9.9.9", "evil.example").allow
    assert not rs.match("2001:db8::1").allow
    assert rs.match("9.9.9.9", "good.example").allow
