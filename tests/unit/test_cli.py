"""The qmtwist command line: where --home may stand, and exit codes (docs/commands.md)."""

from __future__ import annotations

import os

import pytest

from qmtwist.cli import main
from qmtwist.home import Home


@pytest.mark.parametrize("argv", [
    ["--home", "{h}", "user", "add", "bob"],
    ["user", "add", "bob", "--home", "{h}"],
    ["user", "--home={h}", "add", "bob"],
])
def test_home_on_either_side_of_user(tmp_path, argv, capsys):
    h = str(tmp_path / "h")
    assert main(["setup", "--home", h, "--me", "x.example"]) == 0
    assert main([a.format(h=h) for a in argv]) == 0
    capsys.readouterr()
    assert main(["user", "list", "--home", h]) == 0
    assert capsys.readouterr().out == "bob\n"
    with open(os.path.join(h, "users", "assign"), "rb") as f:
        assert f.read().startswith(b"=bob:bob:")


def test_setup_is_idempotent_and_home_from_environment(tmp_path, monkeypatch, capsys):
    h = tmp_path / "envhome"
    monkeypatch.setenv("QMTWIST_HOME", str(h))
    assert main(["setup", "--me", "y.example"]) == 0
    assert capsys.readouterr().out == f"setup: created {h}\n"
    assert (h / "control" / "me").read_bytes() == b"y.example\n"
    (h / "control" / "me").write_bytes(b"changed.example\n")
    assert main(["setup"]) == 0
    assert capsys.readouterr().out == ""
    assert (h / "control" / "me").read_bytes() == b"changed.example\n"
    assert Home(str(h)).isComplete()


def test_ctl_without_daemon_is_111(home, capsys):
    assert main(["--home", home.path, "ctl", "alrm"]) == 111
    assert capsys.readouterr().err == (
        f"qmtwist ctl: fatal: not running (no {home.pidfile})\n")


def test_unknown_subcommand_is_100(capsys):
    assert main(["frobnicate"]) == 100
    assert "unknown subcommand frobnicate" in capsys.readouterr().err
