"""
Errors a person can read (docs/behaviour/operations.md 21.5): real twistd and qmtwist children,
each mistake one line and exit 1 (twistd) or the command's usual status, never a traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from qmtwist.home import Home, setup
from tests.integration.daemon import TWISTD
from tests.integration.test_daemon import qmtwist


def twistd(cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(TWISTD + ["-n", "--pidfile=", "qmtwist", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def output(r: subprocess.CompletedProcess) -> list[str]:
    return (r.stdout + r.stderr).splitlines()


@pytest.mark.parametrize("args, line", [
    (["--smtp", "tcp:notaport"],
     "twistd qmtwist: --smtp tcp:notaport: the port must be a number from 0 to 65535, "
     "not 'notaport'"),
    (["--pop3", "tcp:70000:interface=127.0.0.1"],
     "twistd qmtwist: --pop3 tcp:70000:interface=127.0.0.1: the port must be a number from 0 "
     "to 65535, not '70000'"),
    (["--qmtp", "bogus:1"], "twistd qmtwist: --qmtp bogus:1: Unknown endpoint type: 'bogus'"),
    (["--qmtp", "unix"], "twistd qmtwist: --qmtp unix: a parameter is missing or unknown"),
    (["--metrics", "tcp:x"],
     "twistd qmtwist: --metrics tcp:x: the port must be a number from 0 to 65535, not 'x'"),
    (["--smtp", "systemd:domain=INET:name=smtp"],
     "twistd qmtwist: --smtp systemd:domain=INET:name=smtp: no socket named 'smtp' was handed "
     "over (LISTEN_FDNAMES)"),
    (["--no-such-option"], "twistd qmtwist: option --no-such-option not recognized"),
    (["--smtp-concurrency", "many"],
     "twistd qmtwist: Parameter type enforcement failed: invalid literal for int() with base "
     "10: 'many'"),
])
def test_bad_option_is_one_line_and_exit_1(tmp_path, args, line):
    r = twistd(str(tmp_path), "--home", str(tmp_path / "home"), *args)
    assert r.returncode == 1
    assert output(r) == [line]
    assert not (tmp_path / "home").exists()  # nothing started


def test_unusable_home_is_one_line_and_exit_1(tmp_path):
    (tmp_path / "afile").write_text("not a directory\n")
    r = twistd(str(tmp_path), "--home", str(tmp_path / "afile"), "--smtp", "none")
    assert r.returncode == 1
    assert output(r) == ["alert: cannot start: unable to switch to queue directory: [Errno 17] "
                         f"File exists: '{tmp_path / 'afile'}'"]


@pytest.mark.parametrize("option", ["--smtp", "--metrics"])
def test_port_in_use_is_one_alert_line_and_exit_1(tmp_path, option):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        args = [option, endpoint, "--qmtp", "none", "--pop3", "none"]
        if option == "--metrics":
            args += ["--smtp", "none"]
        r = twistd(str(tmp_path), "--home", str(tmp_path / "home"), *args)
    assert r.returncode == 1
    text = "\n".join(output(r))
    assert "Traceback" not in text
    alerts = [x.split("] ", 1)[1] for x in output(r) if "alert:" in x]
    why = f"Couldn't listen on 127.0.0.1:{port}: [Errno 98] Address already in use."
    if option == "--smtp":
        assert alerts == [f"alert: cannot start: unable to listen on {endpoint}: {why}"]
    else:
        assert alerts == [f"alert: cannot start: metrics: {why}"]


def test_setup_on_an_existing_home_says_what_it_kept(tmp_path):
    home = Home(str(tmp_path / "home"))
    r = qmtwist(home, "setup", "--me", "first.example")
    assert r.returncode == 0
    assert r.stdout.decode() == f"setup: created {home.path}\n"
    r = qmtwist(home, "setup", "--me", "second.example")
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout.decode() == ("setup: kept control/me (first.example, not second.example) and "
                                 "every file that was there; edit HOME/control/me to rename the "
                                 "host\n")
    with open(os.path.join(home.control, "me")) as f:
        assert f.read() == "first.example\n"
    os.unlink(os.path.join(home.control, "locals"))
    r = qmtwist(home, "setup", "--me", "first.example")
    assert r.stdout.decode().splitlines() == [
        f"setup: completed {home.path}: created 1 missing files and directories",
        "setup: kept control/me (first.example) and every file that was there; edit "
        "HOME/control/me to rename the host"]
    r = qmtwist(home, "setup")  # nothing to say about a complete home
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")


@pytest.mark.parametrize("args", [["user", "add", "--help"], ["user", "--help"],
                                  ["user", "del", "-h"]])
def test_user_help(tmp_path, args):
    home = Home(str(tmp_path / "home"))
    setup(home, me="test.example")
    r = qmtwist(home, *args)
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout.startswith(b"usage: qmtwist user add NAME")
    assert not os.path.exists(os.path.join(home.homes, "--help"))


def test_sendmail_t_without_recipients(tmp_path):
    home = Home(str(tmp_path / "home"))
    setup(home, me="test.example")
    r = subprocess.run([sys.executable, os.path.join(home.bin, "sendmail"), "-t"],
                       input=b"Subject: to nobody\n\nhello\n", capture_output=True)
    assert (r.returncode, r.stdout, r.stderr) == (100, b"", b"qmail-inject: fatal: no recipients\n")
    assert os.listdir(home.queue.sub("todo")) == []
