"""
The C{qmtwist} command: C{setup}, C{user}, C{ctl}, and every qmail program by name.

For the qmail programs (C{inject}, C{queue}, C{sendmail} and every C{bin/} name) C{--home} is
accepted only before the subcommand, because their own grammar reads later words (docs/behaviour/home.md 1.3).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from qmtwist.home import Home, chooseHome, setup
from qmtwist.programs import ALIASES, PROGRAMS

USAGE = """usage: qmtwist [--home DIR] SUBCOMMAND [ARGS]

subcommands:
  setup [--me NAME]            create or complete the home directory
  user add|del|list            manage virtual users
  ctl hup|alrm|term            signal the running daemon
  check [--dns HOST:PORT]      report what is wrong with the home (exit 0: nothing)
  ctl queue [--json]           list the queue of the running daemon
  ctl hold|release|delete|retry ID...
                               hold, release, delete (no bounce) or deliver now messages
  ctl stats [--json]           the running daemon's figures
  ctl why ID [--log FILE|-]    the story of a message in the daemon's log
  dkim keygen DOMAIN|list      make or list DKIM signing keys (control/dkim/)
  inject, queue, sendmail, qstat, qread, showctl and every qmail program name in HOME/bin
"""


def runProgram(homePath: str, name: str, args: list[str]) -> int:
    """Run qmail program C{name} for C{homePath} with the real standard streams."""
    from qmtwist.tools.base import ProgramEnv

    name = ALIASES.get(name, name)
    main = PROGRAMS[name]()
    env = ProgramEnv(Home(homePath))
    return int(main([name, *args], env) or 0)


def _setup(home: Home, argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="qmtwist setup")
    p.add_argument("--home")
    p.add_argument("--me", help="this host's name (default: the FQDN)")
    opts = p.parse_args(argv)
    if opts.home:
        home = chooseHome(opts.home)
    from qmtwist.check import readMe
    before = readMe(home)
    try:
        created = setup(home, opts.me)
    except OSError as e:
        sys.stderr.write(f"qmtwist setup: fatal: {e}\n")
        return 111
    if created:
        print(f"setup: created {home.path}" if before is None else
              f"setup: completed {home.path}: created {len(created)} missing files and directories")
    if before is not None and opts.me:
        # an existing home keeps its files (docs/behaviour/operations.md 21.5)
        kept = "" if opts.me == before else f", not {opts.me}"
        print(f"setup: kept control/me ({before}{kept}) and every file that was there; "
              "edit HOME/control/me to rename the host")
    return 0


_SIGNALS = {"hup": signal.SIGHUP, "alrm": signal.SIGALRM, "term": signal.SIGTERM}


def _ctl(home: Home, argv: list[str]) -> int:
    from qmtwist.ctlcommand import COMMANDS, ctlCommand

    homeOpt, words = _popHome(argv)
    if words and words[0] in COMMANDS:
        return ctlCommand(chooseHome(homeOpt) if homeOpt else home, words)
    p = argparse.ArgumentParser(prog="qmtwist ctl")
    p.add_argument("--home")
    p.add_argument("signal", choices=sorted(_SIGNALS))
    opts = p.parse_args(argv)
    if opts.home:
        home = chooseHome(opts.home)
    problem = signalDaemon(home, _SIGNALS[opts.signal])
    if problem:
        sys.stderr.write(f"qmtwist ctl: fatal: {problem}\n")
        return 111
    return 0


def signalDaemon(home: Home, sig: int) -> str | None:
    """
    Send C{sig} to the pid in C{HOME/run/qmtwist.pid}; L{None} on success, else the reason as
    one line. A pid file without a pid greater than 1 is refused: C{kill(0)} or C{kill(-1)}
    would signal this process's group or every process the caller may signal.
    """
    path = home.pidfile
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return f"not running (no {path})"
    except OSError as e:
        return f"unable to read {path}: {e.strerror}"
    if not text.isdigit() or int(text) <= 1:
        return f"{path} holds no pid"
    pid = int(text)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return f"not running (stale {path}: no process {pid})"
    except OSError as e:
        return f"unable to signal pid {pid}: {e.strerror}"
    return None


def _popHome(argv: list[str]) -> tuple[str | None, list[str]]:
    """Take C{--home DIR} or C{--home=DIR} from anywhere in C{argv}."""
    rest: list[str] = []
    found = None
    i = 0
    while i < len(argv):
        if argv[i] == "--home" and i + 1 < len(argv):
            found, i = argv[i + 1], i + 2
            continue
        if argv[i].startswith("--home="):
            found = argv[i].split("=", 1)[1]
        else:
            rest.append(argv[i])
        i += 1
    return found, rest


def _user(home: Home, argv: list[str]) -> int:
    from qmtwist.users import userCommand

    homeOpt, argv = _popHome(argv)
    return userCommand(chooseHome(homeOpt) if homeOpt else home, argv)


def _check(home: Home, argv: list[str]) -> int:
    from qmtwist.check import checkCommand

    return checkCommand(home, argv)


def _dkim(home: Home, argv: list[str]) -> int:
    from qmtwist.dkim.command import dkimCommand

    homeOpt, argv = _popHome(argv)
    return dkimCommand(chooseHome(homeOpt) if homeOpt else home, argv)


_COMMANDS = {"setup": _setup, "ctl": _ctl, "user": _user, "check": _check, "dkim": _dkim}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    homeOpt = None
    while argv and argv[0].startswith("--home"):
        if argv[0] == "--home" and len(argv) > 1:
            homeOpt, argv = argv[1], argv[2:]
        elif argv[0].startswith("--home="):
            homeOpt, argv = argv[0].split("=", 1)[1], argv[1:]
        else:
            break
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if argv else 100
    home = chooseHome(homeOpt)
    cmd, rest = argv[0], argv[1:]
    if cmd in _COMMANDS:
        return _COMMANDS[cmd](home, rest)
    if cmd in PROGRAMS or cmd in ALIASES:
        return runProgram(home.path, cmd, rest)
    sys.stderr.write(f"qmtwist: unknown subcommand {cmd}\n{USAGE}")
    return 100


if __name__ == "__main__":
    sys.exit(main())
