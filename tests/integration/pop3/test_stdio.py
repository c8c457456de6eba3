"""C{HOME/bin/qmail-popup}, C{qmail-pop3d} and C{qmail-qmtpd} on pipes (docs/behaviour/home.md 1.4), as inetd
would run them."""

from __future__ import annotations

import os
import re
import subprocess

from qmtwist.qmtp.netstring import encode, encodeList
from tests.integration.pop3.test_listener import (
    FILES, REPO, addUser, fill, listing,
    writeCheckpw)


def run(argv, data: bytes, cwd=None, env=None, timeout=60):
    return subprocess.run(argv, input=data, capture_output=True, cwd=cwd, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=REPO, **(env or {})))


def test_qmail_pop3d_on_pipes(pop3home):
    home = pop3home
    uid, gid, userHome = addUser(home, "joe", b"pw")
    fill(os.path.join(userHome, "Maildir"), uid, gid)
    if os.getuid() == 0:  # qmail-pop3d never serves uid 0: run it as checkpassword would
        r = run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                 "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--",
                 home.sub("bin", "qmail-pop3d"), "Maildir"],
                b"STAT\r\nUIDL 2\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n", cwd=userHome)
    else:
        r = run([home.sub("bin", "qmail-pop3d"), "Maildir"],
                b"STAT\r\nUIDL 2\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n", cwd=userHome)
    total = sum(len(d) for _, d in FILES)
    assert r.stdout == (b"+OK \r\n+OK 3 %d\r\n+OK 2 2000.B.test\r\n" % total
                        + b"+OK \r\nSubject: one\r\n\r\n..leading dot\r\nbody\r\n\r\n.\r\n"
                        + b"+OK \r\n+OK \r\n"), r.stderr
    assert r.returncode == 0
    assert listing(os.path.join(userHome, "Maildir")) == {
        "new": [], "cur": ["2000.B.test:2,", "3000.C.test:2,"]}


def test_qmail_pop3d_refuses_root_and_missing_maildir(pop3home, tmp_path):
    if os.getuid() == 0:
        r = run([pop3home.sub("bin", "qmail-pop3d"), "Maildir"], b"STAT\r\n", cwd=str(tmp_path))
        assert (r.returncode, r.stdout) == (1, b"")
    else:
        r = run([pop3home.sub("bin", "qmail-pop3d"), "Maildir"], b"STAT\r\n", cwd=str(tmp_path))
        assert (r.returncode, r.stdout) == (0, b"-ERR this user has no $HOME/Maildir\r\n")


def test_qmail_popup_with_checkpassword_on_pipes(pop3home):
    home = pop3home
    uid, gid, userHome = addUser(home, "joe", b"ignored")
    fill(os.path.join(userHome, "Maildir"), uid, gid)
    checkpw, log = writeCheckpw(home, uid, gid, userHome)
    argv = [home.sub("bin", "qmail-popup"), "pop.example", checkpw, home.sub("bin", "qmail-pop3d"),
            "Maildir"]
    r = run(argv, b"USER joe\r\nPASS pw\r\nUIDL 1\r\nQUIT\r\n")
    m = re.fullmatch(rb"\+OK <(\d+\.\d+@pop\.example)>\r\n\+OK \r\n\+OK \r\n"
                     rb"\+OK 1 1000\.A\.test\r\n\+OK \r\n", r.stdout)
    assert m, (r.stdout, r.stderr)
    with open(log, "rb") as f:
        assert f.read() == b"joe <" + m.group(1) + b">\n"
    r = run(argv, b"USER joe\r\nPASS bad\r\n", env={"TCPREMOTEIP": "10.1.2.3"})
    assert r.stdout.endswith(b"+OK \r\n-ERR authorization failed\r\n"), r.stdout
    r = run(argv[:2], b"")
    assert (r.returncode, r.stdout) == (1, b"-ERR usage: popup hostname subprogram\r\n")


def test_qmail_qmtpd_on_pipes(pop3home):
    home = pop3home
    data = (encode(b"\nSubject: x\n\nhi\n") + encode(b"a@b.example")
            + encodeList([b"joe@test.example", b"x@elsewhere.example"]))
    r = run([home.sub("bin", "qmail-qmtpd")], data,
            env={"TCPREMOTEIP": "10.0.0.9", "TCPLOCALHOST": "test.example",
                 "TCPREMOTEHOST": "client.example"})
    assert re.fullmatch(rb"\d+:Kok \d+ qp \d+,66:Dsorry, that domain isn't in my list of "
                        rb"allowed rcpthosts \(#5\.7\.1\),", r.stdout), (r.stdout, r.stderr)
    assert r.returncode == 0
    todo = os.listdir(home.queue.sub("todo"))
    assert len(todo) == 1
    with open(home.queue.mess(int(todo[0])), "rb") as f:
        mess = f.read()
    assert re.fullmatch(rb"Received: \(qmail \d+ invoked from network\); [^\n]+\n"
                        rb"Received: from client\.example \(10\.0\.0\.9\)\n"
                        rb"  by test\.example with QMTP; [^\n]+\n"
                        rb"Subject: x\n\nhi\n", mess), mess
