"""Environment, Delivered-To/Return-Path/From_ lines and NEWSENDER (docs/behaviour/local.md 4.5-4.9)."""

from __future__ import annotations

from qmtwist.local import env


def test_hostCuts():
    assert env.hostCuts(b"a.b.c.d") == (b"a.b.c", b"a.b", b"a")
    assert env.hostCuts(b"far.org") == (b"far", b"far", b"far")
    assert env.hostCuts(b"fixme") == (b"fixme", b"fixme", b"fixme")


def test_extCuts():
    assert env.extCuts(b"uucp-joe-x") == (b"joe-x", b"x", b"")
    assert env.extCuts(b"plain") == (b"", b"", b"")


def test_lines():
    assert env.dtline(b"bob-info", b"nowhere.mil") == b"Delivered-To: bob-info@nowhere.mil\n"
    assert env.rpline(b"") == b"Return-Path: <>\n"
    assert env.rpline(b"a@b") == b"Return-Path: <a@b>\n"
    assert env.ufline(b"", 0) == b"From MAILER-DAEMON Thu Jan 01 00:00:00 1970\n"
    assert env.ufline(b"a b\tc\nd@e", 0) == b"From a-b-c-d@e Thu Jan 01 00:00:00 1970\n"


def test_newSender():
    assert env.newSender(b"s@x", b"me-sos", b"h", False, False) == b"s@x"
    assert env.newSender(b"s@x", b"me-sos", b"h", True, False) == b"me-sos-owner@h"
    assert env.newSender(b"s@x", b"me-sos", b"h", True, True) == b"me-sos-owner-@h-@[]"
    assert env.newSender(b"", b"me-sos", b"h", True, True) == b""
    assert env.newSender(b"#@[]", b"me-sos", b"h", True, False) == b"#@[]"


def test_programEnvSpecExample():
    e = env.programEnv(
        {b"PATH": b"/usr/bin:/bin", b"DEFAULT": b"stale", b"KEEP": b"1"},
        sender=b"s@x", newsender=b"s@x", local=b"alias-uucp-joe-x", host=b"far.org",
        user=b"alias", home="/h", ext=b"uucp-joe-x", default=b"joe-x", dt=b"D\n", rp=b"R\n",
        uf=b"U\n", binDir="/q/bin")
    assert e[b"LOCAL"] == b"alias-uucp-joe-x" and e[b"EXT"] == b"uucp-joe-x"
    assert e[b"EXT2"] == b"joe-x" and e[b"DEFAULT"] == b"joe-x"
    assert e[b"HOST"] == b"far.org" and e[b"HOST2"] == b"far"
    assert e[b"RECIPIENT"] == b"alias-uucp-joe-x@far.org"
    assert e[b"PATH"] == b"/q/bin:/usr/bin:/bin"
    assert e[b"KEEP"] == b"1" and e[b"HOME"] == b"/h" and e[b"USER"] == b"alias"
    e2 = env.programEnv({b"DEFAULT": b"stale"}, sender=b"", newsender=b"", local=b"l", host=b"h",
                        user=b"u", home="/h", ext=b"", default=None, dt=b"", rp=b"", uf=b"",
                        binDir="/b")
    assert b"DEFAULT" not in e2
