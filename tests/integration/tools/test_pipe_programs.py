"""The .qmail pipe programs as real processes (FAQ 2.3, 4.1, 4.2, 4.4; docs/behaviour/tools.md 13, 14.2).

A pipe delivery runs C{/bin/sh -c LINE} with HOME/bin first on PATH and the variables of
docs/behaviour/local.md 4.5; these tests do the same with a fixed environment and stdin, so they do not
depend on
the queue service's delivery.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.integration.tools.conftest import childEnv, envelopeTail, queued

MESSAGE = b"Received: (qmail 1 invoked by uid 0); 5 Nov 2025 07:03:09 -0000\nSubject: x\n\nbody\nFrom here\n"


def deliveryEnv(home, **extra: str) -> dict[str, str]:
    env = childEnv(
        SENDER="alice@here.example", NEWSENDER="alice@here.example",
        RECIPIENT="alias-uucp-joe@far.org", LOCAL="alias-uucp-joe", HOST="far.org",
        EXT="uucp-joe", EXT2="joe", USER="alias", HOME=home.alias,
        UFLINE="From alice@here.example Wed Nov 05 07:03:09 2025\n",
        RPLINE="Return-Path: <alice@here.example>\n",
        DTLINE="Delivered-To: alias-uucp-joe@far.org\n")
    env["PATH"] = home.bin + ":" + env["PATH"]
    env.update(extra)
    return env


def pipe(home, line: str, stdin: bytes = MESSAGE, cwd: str | None = None, **extra: str):
    """Run LINE as a delivery does: stdin is a seekable file holding the message."""
    import tempfile

    with tempfile.TemporaryFile() as f:
        f.write(stdin)
        f.seek(0)
        return subprocess.run(["/bin/sh", "-c", line], stdin=f, capture_output=True,
                              env=deliveryEnv(home, **extra), cwd=cwd or home.alias,
                              timeout=60)


@pytest.fixture
def uux(tmp_path):
    """A stand-in for /usr/bin/uux that records its arguments and stdin."""
    script = tmp_path / "uux"
    script.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > {tmp_path}/args\n'
                      f'cat > {tmp_path}/stdin\nexit ${{UUX_EXIT:-0}}\n')
    script.chmod(0o755)
    return script


FAQ23 = '|preline -df {uux} - -r -gC -a"$SENDER" gonzo!rmail "($EXT2@$HOST)"'


@pytest.mark.parametrize("exit", [0, 100, 111])
def test_faq23_uucp(lhome, uux, exit):
    line = FAQ23.format(uux=uux)[1:]
    r = pipe(lhome, line, UUX_EXIT=str(exit))
    assert r.returncode == exit, r.stderr
    args = (uux.parent / "args").read_bytes()
    assert args == b"-\n-r\n-gC\n-aalice@here.example\ngonzo!rmail\n(joe@far.org)\n"
    assert (uux.parent / "stdin").read_bytes() == (
        b"Return-Path: <alice@here.example>\n" + MESSAGE)


def test_prelineRealPipeProgram(lhome, tmp_path):
    out = tmp_path / "out"
    r = pipe(lhome, f"preline cat > {out}")
    assert r.returncode == 0
    assert out.read_bytes() == (
        b"From alice@here.example Wed Nov 05 07:03:09 2025\n"
        b"Return-Path: <alice@here.example>\n"
        b"Delivered-To: alias-uucp-joe@far.org\n" + MESSAGE)


def test_faq44_procmail(lhome, tmp_path):
    procmail = shutil.which("procmail")
    if procmail is None:
        pytest.skip("Debian package procmail is not installed")
    rc = tmp_path / "procmailrc"
    rc.write_text(f"DEFAULT={tmp_path}/mbox\n")
    r = pipe(lhome, f"| preline procmail {rc}"[2:])
    assert (r.returncode, r.stderr) == (0, b"")
    assert (tmp_path / "mbox").read_bytes() == (
        b"From alice@here.example Wed Nov 05 07:03:09 2025\n"
        b"Return-Path: <alice@here.example>\n"
        b"Delivered-To: alias-uucp-joe@far.org\n"
        + MESSAGE.replace(b"\nFrom here", b"\n>From here") + b"\n")


def test_faq41_forward(lhome):
    r = pipe(lhome, 'forward "$LOCAL"@bigbang.af.mil', LOCAL="nosuchuser",
             DTLINE="Delivered-To: nosuchuser@test.example\n")
    assert r.returncode == 0
    assert re.fullmatch(rb"forward: qp \d+\n", r.stderr)
    [(todo, mess)] = queued(lhome)
    assert envelopeTail(todo) == b"Falice@here.example\0Tnosuchuser@bigbang.af.mil\0"
    assert mess.split(b"\n", 1)[1] == b"Delivered-To: nosuchuser@test.example\n" + MESSAGE


def test_faq55_fixupReinjection(lhome):
    r = pipe(lhome, 'qmail-inject -f "$SENDER" -- "$EXT2"', stdin=b"To: joe\nSubject: fix\n\nb\n",
             EXT2="joe@x.example")
    assert r.returncode == 0, r.stderr
    [(todo, mess)] = queued(lhome)
    assert envelopeTail(todo) == b"Falice@here.example\0Tjoe@x.example\0"
    assert b"\nTo: joe@test.example\n" in mess and b"\nMessage-ID: <" in mess


def test_condredirectAndBouncesaying(lhome):
    r = pipe(lhome, "condredirect other@x.y grep -q 'From here'")
    assert r.returncode == 99 and r.stderr.startswith(b"condredirect: qp ")
    [(todo, _)] = queued(lhome)
    assert envelopeTail(todo) == b"Falice@here.example\0Tother@x.y\0"
    r = pipe(lhome, "bouncesaying 'No thanks.' grep -q 'From here'")
    assert (r.returncode, r.stdout + r.stderr) == (100, b"No thanks.\n")
    r = pipe(lhome, "except grep -q nomatch")
    assert r.returncode == 0


def test_faq42_qlist2ByMail(lhome, tmp_path):
    me = tmp_path / "me"
    me.mkdir()
    (me / ".qmail-sos").write_text("friend@x.y\n")
    (me / ".qmail-sos-request").write_text("| qlist2 sos my.host.name\n")
    line = "qlist2 sos my.host.name"
    env = dict(USER="me", HOME=str(me), LOCAL="me-sos-request", HOST="my.host.name",
               DTLINE="Delivered-To: me-sos-request@my.host.name\n")
    r = pipe(lhome, line, stdin=b"From: new@x.y\n\n", cwd=str(me), SENDER="new@x.y", **env)
    assert (r.returncode, r.stderr) == (0, b"")
    [(todo, request)] = queued(lhome)
    assert envelopeTail(todo) == b"Fme-sos-owner@my.host.name\0Tnew@x.y\0"
    cookie = re.search(rb"\nSubject: (confirm [0-9a-f]{32})\n", request).group(1)
    assert (me / ".qmail-sos").read_text() == "friend@x.y\n"
    os.unlink(lhome.queue.todo(int(os.listdir(lhome.queue.sub("todo"))[0])))
    r = pipe(lhome, line, stdin=b"From: new@x.y\nSubject: Re: " + cookie + b"\n\n",
             cwd=str(me), SENDER="new@x.y", **env)
    assert (r.returncode, r.stderr) == (0, b"")
    assert (me / ".qmail-sos").read_text() == "friend@x.y\n&new@x.y\n"
    [(todo, ack)] = queued(lhome)
    assert b"Acknowledgment: new@x.y is now a subscriber." in ack
