"""Header parsing and address rewriting as qmail-inject does it (docs/behaviour/tools.md 12.1)."""

from __future__ import annotations

import io
import os

import pytest

from qmtwist.tools import token822
from qmtwist.tools.header import (
    Completion, fieldName, isValidField, quoteAddress, readCompletion, rewriteAddressText,
    splitHeader)

C = Completion(b"af.mil", b"berkeley.edu", b"berkeley.edu", b"id.example")


@pytest.mark.parametrize("arg,expected", [
    (b"<>", b"<>"),  # quote2 leaves it; parse gives < > ... see the empty case below
    (b"", b""),
    (b"joe", b"joe@af.mil"),
    (b"djb@silverton", b"djb@silverton.berkeley.edu"),
    (b"eric@mammoth.cs+", b"eric@mammoth.cs.berkeley.edu"),
    (b"eric@mammoth+", b"eric@mammoth.berkeley.edu"),
    # an argument's local part is quoted first (quote2), so a route stays in it, as in qmail
    (b"@a:joe@b.example", b"@a:joe@b.example"),
    (b"joe@host.example.", b"joe@host.example"),
    (b"joe@", b"joe@af.mil"),
    (b"joe@[1.2.3.4]", b"joe@[1.2.3.4]"),
    (b"joe-@host-@[]", b"joe-@host-@[]"),
    (b"a b@c.d", b"a b@c.d"),
    (b"Fred.Smith@Example.COM", b"Fred.Smith@Example.COM"),
    (b"joe@localhost", b"joe@localhost.berkeley.edu"),
])
def test_rewriteAddressText(arg, expected):
    if arg == b"<>":
        assert token822.unquote(C.rewrite(token822.parse(b""))) == b""
        return
    assert rewriteAddressText(arg, C) == expected


@pytest.mark.parametrize("text", [b"(a", b'"a', b"[a", b")", b"]", b"a(b", b"\"a\\"])
def test_parseErrors(text):
    with pytest.raises(token822.ParseError):
        token822.parse(text)


def _field(line: bytes) -> tuple[bytes, list[bytes]]:
    seen: list[bytes] = []

    def rw(addr):
        addr = C.rewrite(addr)
        seen.append(token822.unquote(addr))
        return addr

    return token822.unparse(token822.addressList(token822.parse(line), rw)), seen


@pytest.mark.parametrize("line,out,addrs", [
    (b"To: fred\n", b"To: fred@af.mil\n", [b"fred@af.mil"]),
    (b"To: fred, joe\n", b"To: fred@af.mil, joe@af.mil\n", [b"joe@af.mil", b"fred@af.mil"]),
    (b"To: djb fred\n", b"To: djb@af.mil, fred@af.mil\n", [b"fred@af.mil", b"djb@af.mil"]),
    (b"To: Fred Smith <fred>\n", b"To: Fred Smith <fred@af.mil>\n", [b"fred@af.mil"]),
    (b'To: "Smith, Fred" <fred@x.y>\n', b'To: "Smith, Fred" <fred@x.y>\n', [b"fred@x.y"]),
    (b"To: fred (Fred Smith)\n", b"To: fred@af.mil (Fred Smith)\n", [b"fred@af.mil"]),
    (b"To:   fred  @  x  .  y\n", b"To: fred@x.y\n", [b"fred@x.y"]),
    (b"To: <@r1,@r2:joe@b.c>\n", b"To: <joe@b.c>\n", [b"joe@b.c"]),
    (b"Cc: friends: a, b;\n", b"Cc: friends: a@af.mil, b@af.mil;\n",
     [b"b@af.mil", b"a@af.mil"]),
    (b"Cc: recipient list not shown: ;\n", b"Cc: recipient list not shown: ;\n", []),
    (b"From: <>\n", b"From: <>\n", [b""]),
    (b"To: a\n  ,\tb\n", b"To: a@af.mil, b@af.mil\n", [b"b@af.mil", b"a@af.mil"]),
    (b'To: "joe q"@x.y\n', b'To: "joe q"@x.y\n', [b"joe q@x.y"]),
    (b"Reply-To: eric@mammoth.cs+\n", b"Reply-To: eric@mammoth.cs.berkeley.edu\n",
     [b"eric@mammoth.cs.berkeley.edu"]),
    (b"To: x@[10.0.0.1]\n", b"To: x@[10.0.0.1]\n", [b"x@[10.0.0.1]"]),
    (b"To: a\\\"b@c.d\n", b'To: a\\"b@c.d\n', [b'a"b@c.d']),
    (b"To: a)b@c.d\n", b'To: "a\\)b"@c.d\n', [b"a)b@c.d"]),
    (b"To: a;\n", b"To: a@af.mil;\n", [b"a@af.mil"]),
])
def test_addressFields(line, out, addrs):
    assert _field(line) == (out, addrs)


@pytest.mark.parametrize("line", [b"To: g: a\n", b"To: a>\n", b"To: g: h: a;;\n"])
def test_addressFieldErrors(line):
    with pytest.raises(token822.ParseError):
        _field(line)


def test_folding():
    names = [b"averyveryverylongaddress%d@example.com" % i for i in range(4)]
    out, _ = _field(b"To: " + b", ".join(names) + b"\n")
    assert out == (
        b"To: averyveryverylongaddress0@example.com,\n"
        b"  averyveryverylongaddress1@example.com,\n"
        b"  averyveryverylongaddress2@example.com, averyveryverylongaddress3@example.com\n")


@pytest.mark.parametrize("line,name", [
    (b"To: x\n", "to"), (b"tO : x\n", "to"), (b"RESENT-CC:x\n", "resent-cc"),
    (b"Subject: x\n", "subject"), (b"X-To: x\n", None), (b"To x\n", None),
    (b"Apparently-To: x\n", "apparently-to"), (b"Content-Length: 3\n", "content-length"),
])
def test_fieldName(line, name):
    assert fieldName(line) == name


@pytest.mark.parametrize("line,valid", [
    (b"Subject: x\n", True), (b"Subject : x\n", True), (b"Subject\t: x\n", True),
    (b": x\n", False), (b" : x\n", False), (b"Sub ject: x\n", False), (b"no colon\n", False),
    (b"X\x80: y\n", False), (b"X-\x7e: y\n", True),
])
def test_isValidField(line, valid):
    assert isValidField(line) is valid


@pytest.mark.parametrize("data,fields,bodyStart,rest", [
    (b"To: a\nSubject: b\n\nbody\n", [b"To: a\n", b"Subject: b\n"], b"\n", b"body\n"),
    (b"To: a,\n b\n\tc\n\nx", [b"To: a,\n b\n\tc\n"], b"\n", b"x"),
    (b"From joe Mon\nTo: a\n\n", [b"MBOX-Line: From joe Mon\n", b"To: a\n"], b"\n", b""),
    (b"To: a\nthis is body\nmore\n", [b"To: a\n"], b"\nthis is body\n", b"more\n"),
    (b"To: a", [b"To: a\n"], b"", b""),
    (b"", [], b"", b""),
    (b"\nbody\n", [], b"\n", b"body\n"),
    (b"To: a\r\n\r\nbody\r\n", [b"To: a\r\n"], b"\n\r\n", b"body\r\n"),
])
def test_splitHeader(data, fields, bodyStart, rest):
    stream = io.BytesIO(data)
    split = splitHeader(stream)
    assert (split.fields, split.bodyStart, stream.read()) == (fields, bodyStart, rest)


@pytest.mark.parametrize("address,quoted", [
    (b"joe@x", b"joe@x"), (b"joe smith@x", b'"joe smith"@x'), (b"a\"b@x", b'"a\\"b"@x'),
    (b".joe@x", b'".joe"@x'), (b"a..b@x", b'"a..b"@x'), (b"", b""), (b"joe", b"joe"),
    (b"a@b@c", b'"a@b"@c'),
])
def test_quoteAddress(address, quoted):
    assert quoteAddress(address) == quoted


def test_readCompletionDefaults(tmp_path):
    (tmp_path / "me").write_bytes(b"zippy.af.mil\n")
    c = readCompletion(str(tmp_path), {})
    assert c == Completion(b"zippy.af.mil", b"zippy.af.mil", b"zippy.af.mil", b"zippy.af.mil")
    (tmp_path / "defaulthost").write_bytes(b"af.mil \n")
    (tmp_path / "defaultdomain").write_bytes(b"berkeley.edu\nignored\n")
    c = readCompletion(str(tmp_path), {"QMAILPLUSDOMAIN": "plus.example",
                                       "QMAILIDHOST": "id.example"})
    assert c == Completion(b"af.mil", b"berkeley.edu", b"plus.example", b"id.example")


def test_readCompletionNoMe(tmp_path):
    c = readCompletion(str(tmp_path), {})
    assert c == Completion(b"defaulthost", b"defaultdomain", b"plusdomain", b"idhost")


def test_readCompletionRefusesControlCharactersAndFifos(tmp_path):
    from tests.unit.test_control import withoutHanging

    (tmp_path / "me").write_bytes(b"zippy.af.mil\n")
    (tmp_path / "idhost").write_bytes(b"id\r\n.example\n")  # trailing CR is stripped: fine
    (tmp_path / "plusdomain").write_bytes(b"plus\rexample\n")
    fifo = str(tmp_path / "defaultdomain")
    os.mkfifo(fifo)
    lines: list[str] = []
    c = withoutHanging(fifo, lambda: readCompletion(str(tmp_path), {}, lines.append))
    assert c == Completion(b"zippy.af.mil", b"zippy.af.mil", b"zippy.af.mil", b"id")
    assert lines == [
        "warning: control/defaultdomain is not a regular file; ignored",
        "warning: control/plusdomain line 1: contains a control character; "
        "using default zippy.af.mil",
    ]
