"""qmail-inject, sendmail and datemail through HOME/bin launchers and real MUAs (FAQ 1, 6, 8.2)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.integration.tools.conftest import childEnv, envelopeTail, queued, run


def test_faq11_hostMasquerading(lhome):
    with open(os.path.join(lhome.control, "defaulthost"), "w") as f:
        f.write("af.mil\n")
    os.chmod(os.path.join(lhome.control, "defaulthost"), 0o644)
    r = run(lhome, "qmail-inject", [], b"To: fred\n\nx\n", USER="joe")
    assert (r.returncode, r.stderr) == (0, b"")
    [(todo, mess)] = queued(lhome)
    assert envelopeTail(todo) == b"Fjoe@af.mil\0Tfred@af.mil\0"
    header = mess.split(b"\n\n", 1)[0]
    assert b"\nFrom: joe@af.mil\n" in header + b"\n" and b"\nTo: fred@af.mil" in header
    assert b"test.example" not in b"".join(
        line for line in header.split(b"\n") if line.startswith((b"From:", b"To:")))
    assert todo.startswith(b"u%d\0p" % os.getuid())


def test_faq12_userMasquerading(lhome):
    r = run(lhome, "qmail-inject", ["x@y.z"], b"From: god@heaven.af.mil\n\nx\n",
            MAILHOST="af.mil", MAILUSER="boss", QMAILINJECT="f")
    assert r.returncode == 0
    [(todo, mess)] = queued(lhome)
    assert envelopeTail(todo) == b"Fboss@af.mil\0Tx@y.z\0"
    assert b"\nFrom: boss@af.mil\n" in mess and b"god@" not in mess


def test_qmtwistInjectSubcommand(lhome):
    r = subprocess.run(["python", "-m", "qmtwist.cli", "--home", lhome.path, "inject",
                        "-f", "s@x.y", "a@x.y"], input=b"Subject: s\n\n",
                       capture_output=True, env=childEnv(), timeout=60)
    assert (r.returncode, r.stderr) == (0, b"")
    [(todo, _)] = queued(lhome)
    assert envelopeTail(todo) == b"Fs@x.y\0Ta@x.y\0"


@pytest.mark.parametrize("args,environ", [
    (["-f", "a@b\nBcc: evil@x", "x@y.z"], {}),
    (["-a", "x@y.z\r\nBcc: evil@x"], {}),
    ([], {"MAILUSER": "boss\nBcc: evil@x"}),
])
def test_headerInjectionRefused(lhome, args, environ):
    r = run(lhome, "qmail-inject", args, b"To: t@x.y\n\n", **environ)
    assert r.returncode == 100
    assert r.stderr.startswith(b"qmail-inject: fatal: newline in ")
    assert queued(lhome) == []
    sendmailArgs = [a for a in args if a != "-a"] or ["t@x.y"]
    r = run(lhome, "sendmail", sendmailArgs, b"To: t@x.y\n\n", **environ)
    assert r.returncode == 100 and queued(lhome) == []


def test_faq62_pineScript(lhome, tmp_path):
    # pine runs "sendmail-path=/usr/lib/sendmail -oem -oi -t"; /usr/lib/sendmail -> HOME/bin
    lib = tmp_path / "usr-lib"
    lib.mkdir()
    os.symlink(os.path.join(lhome.bin, "sendmail"), lib / "sendmail")
    script = tmp_path / "pine"
    script.write_text(f"#!/bin/sh\nprintf 'To: a@x.y\\nCc: c@x.y\\nBcc: b@x.y\\n"
                      f"Subject: pine\\n\\none\\n.\\ntwo\\n' | {lib}/sendmail -oem -oi -t\n"
                      "echo exit=$?\n")
    script.chmod(0o755)
    r = subprocess.run([str(script)], capture_output=True, env=childEnv(USER="pine"),
                       timeout=60)
    assert (r.stdout, r.stderr) == (b"exit=0\n", b"")
    [(todo, mess)] = queued(lhome)
    assert envelopeTail(todo) == b"Fpine@test.example\0Ta@x.y\0Tc@x.y\0Tb@x.y\0"
    assert b"Bcc" not in mess and b"b@x.y" not in mess
    assert mess.endswith(b"\n\none\n.\ntwo\n")


def test_faq63_mhSendMail(lhome):
    r = run(lhome, "sendmail", ["-m", "-t", "-i"], b"To: mh@x.y\n\nvia spost\n", USER="u")
    assert r.returncode == 0
    [(todo, _)] = queued(lhome)
    assert envelopeTail(todo) == b"Fu@test.example\0Tmh@x.y\0"
    r = run(lhome, "sendmail", ["-m", "-t", "-i", "-bv"], b"To: mh@x.y\n\n")
    assert r.returncode == 100 and r.stderr.startswith(b"sendmail: usage: ")


def test_faq64_eofEndsInput(lhome):
    # dtcm: the program finishes when its input reaches EOF and returns the queue's status
    r = run(lhome, "sendmail", ["a@x.y"], b"", USER="u")
    assert r.returncode == 0
    [(todo, mess)] = queued(lhome)
    assert envelopeTail(todo) == b"Fu@test.example\0Ta@x.y\0"


def test_faq82_queueextra(lhome):
    with open(os.path.join(lhome.control, "queueextra"), "w") as f:
        f.write("log\n")
    r = run(lhome, "qmail-inject", ["a@x.y"], b"Message-ID: <m1@x.y>\nSubject: s\n\nbody\n")
    assert r.returncode == 0
    [(todo, mess)] = queued(lhome)
    assert envelopeTail(todo) == b"Fanonymous@test.example\0Tlog\0Ta@x.y\0"
    awk = "awk '/^$/ { exit } /^[mM][eE][sS][sS][aA][gG][eE]-/ { print }'"
    out = subprocess.run(["/bin/sh", "-c", awk], input=mess, capture_output=True)
    assert out.stdout == b"Message-ID: <m1@x.y>\n"


def test_faq61_bsdMailDatemail(lhome, tmp_path):
    mailx = shutil.which("bsd-mailx")
    if mailx is None:
        pytest.skip("Debian package bsd-mailx is not installed")
    rc = tmp_path / "mailrc"
    rc.write_text(f"set sendmail={lhome.bin}/datemail\n")
    r = subprocess.run([mailx, "-s", "local zone", "fred@x.y"], input=b"hello\n",
                       capture_output=True, timeout=60,
                       env=childEnv(MAILRC=str(rc), USER="joe", HOME=str(tmp_path),
                                    TZ="CET-1"))
    assert r.returncode == 0, r.stderr
    [(todo, mess)] = queued(lhome)
    assert envelopeTail(todo) == b"Fjoe@test.example\0Tfred@x.y\0"
    dates = re.findall(rb"\nDate: (.*)\n", mess)
    assert len(dates) == 1 and re.fullmatch(
        rb"\d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d \+0100", dates[0]), mess
    assert b"\nSubject: local zone\n" in mess and mess.endswith(b"\nhello\n")


def test_sNailThroughDatemailKeepsOneDate(lhome, tmp_path):
    snail = shutil.which("s-nail")
    if snail is None:
        pytest.skip("Debian package s-nail is not installed")
    rc = tmp_path / "mailrc"
    rc.write_text(f"set mta={lhome.bin}/datemail\n")
    r = subprocess.run([snail, "-n", "-s", "from s-nail", "fred@x.y"], input=b"hello\n",
                       capture_output=True, timeout=60,
                       env=childEnv(MAILRC=str(rc), QMAILUSER="joe", HOME=str(tmp_path),
                                    TZ="CET-1"))
    assert r.returncode == 0, r.stderr
    [(todo, mess)] = queued(lhome)
    assert envelopeTail(todo) == b"Fjoe@test.example\0Tfred@x.y\0"
    dates = re.findall(rb"\nDate: (.*)\n", mess)
    assert len(dates) == 1 and dates[0].endswith(b" +0100"), mess
    assert b"\nSubject: from s-nail\n" in mess and mess.endswith(b"\nhello\n")


def test_muttSendsThroughSendmail(lhome, tmp_path):
    mutt = shutil.which("mutt")
    if mutt is None:
        pytest.skip("Debian package mutt is not installed")
    rc = tmp_path / "muttrc"
    rc.write_text(f'set sendmail="{lhome.bin}/sendmail -oem -oi"\nset use_from=no\n'
                  "set realname='Joe User'\nset use_envelope_from=no\n")
    r = subprocess.run([mutt, "-n", "-F", str(rc), "-s", "from mutt", "-c", "cc@x.y",
                        "-b", "bcc@x.y", "to@x.y"], input=b"mutt body\n", capture_output=True,
                       timeout=60, env=childEnv(USER="joe", HOME=str(tmp_path)))
    assert r.returncode == 0, r.stderr
    [(todo, mess)] = queued(lhome)
    assert envelopeTail(todo) == b"Fjoe@test.example\0Tto@x.y\0Tcc@x.y\0Tbcc@x.y\0"
    header = mess.split(b"\n\n", 1)[0] + b"\n"
    assert b"\nTo: to@x.y\n" in header and b"\nCc: cc@x.y\n" in header
    assert b"bcc@x.y" not in header
    assert b"\nSubject: from mutt\n" in header and b"\nMessage-ID: " in header
    assert mess.endswith(b"mutt body\n")


def test_sendmailBsSpeaksSmtp(lhome):
    if not os.path.exists(os.path.join(lhome.bin, "qmail-smtpd")):
        pytest.skip("the stdio qmail-smtpd (SMTP component) is not in this tree")
    r = run(lhome, "sendmail", ["-bs"],
            b"HELO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@far.example>\r\nDATA\r\n"
            b"Subject: bs\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"220 test.example") and b"\r\n221 " in r.stdout
    [(todo, mess)] = queued(lhome)
    assert envelopeTail(todo) == b"Fa@b.c\0Tx@far.example\0"  # RELAYCLIENT="" set by -bs
    assert mess.endswith(b"Subject: bs\n\nhi\n")


def test_mailqSymlink(lhome):
    # setup links both names to the sendmail launcher
    assert os.readlink(os.path.join(lhome.bin, "mailq")) == "sendmail"
    assert os.readlink(os.path.join(lhome.bin, "newaliases")) == "sendmail"
    r = run(lhome, "mailq", [])
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert queued(lhome) == []  # listed, not sent
    r = run(lhome, "newaliases", [])
    assert r.returncode == 100 and b"no aliases database" in r.stderr
