"""
The qmail programs qmtwist provides under their qmail names (docs/behaviour/home.md 1.3).

L{PROGRAMS} maps a program name to a loader: a function that imports the program's module and
returns its entry point, called as C{main(argv, env)} with a L{qmtwist.tools.base.ProgramEnv}
and returning the exit code. The imports are plain statements inside the loaders, so a program
pays only for its own module at start-up (HOME/bin programs run once per delivery), and a
module that is missing or broken fails where it is named. C{qmtwist setup} writes a launcher in
C{HOME/bin} for each program, after checking that every loader works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from qmtwist.tools.base import ProgramEnv

#: a program's entry point: C{main(argv, env) -> exit code}
Main = Callable[[list[str], "ProgramEnv"], "int | None"]


def _qmail_queue() -> Main:
    from qmtwist.tools.qmailqueue import main
    return main


def _qmail_inject() -> Main:
    from qmtwist.tools.inject import main
    return main


def _sendmail() -> Main:
    from qmtwist.tools.sendmail import main
    return main


def _datemail() -> Main:
    from qmtwist.tools.datemail import main
    return main


def _forward() -> Main:
    from qmtwist.tools.forward import main
    return main


def _preline() -> Main:
    from qmtwist.tools.preline import main
    return main


def _condredirect() -> Main:
    from qmtwist.tools.condredirect import main
    return main


def _bouncesaying() -> Main:
    from qmtwist.tools.bouncesaying import main
    return main


def _except() -> Main:
    from qmtwist.tools.except_ import main
    return main


def _maildirmake() -> Main:
    from qmtwist.tools.maildirmake import main
    return main


def _maildir2mbox() -> Main:
    from qmtwist.tools.maildir2mbox import main
    return main


def _qmail_qread() -> Main:
    from qmtwist.tools.qread import main
    return main


def _qmail_qstat() -> Main:
    from qmtwist.tools.qstat import main
    return main


def _qmail_showctl() -> Main:
    from qmtwist.tools.showctl import main
    return main


def _qmail_tcpok() -> Main:
    from qmtwist.tools.tcpok import main
    return main


def _qmail_tcpto() -> Main:
    from qmtwist.tools.tcpto import main
    return main


def _qlist2() -> Main:
    from qmtwist.tools.qlist2 import main
    return main


def _splogger() -> Main:
    from qmtwist.tools.splogger import main
    return main


def _maildirsmtp() -> Main:
    from qmtwist.tools.maildirsmtp import main
    return main


def _maildirqmtp() -> Main:
    from qmtwist.tools.maildirqmtp import main
    return main


def _qmail_smtpd() -> Main:
    from qmtwist.smtp.stdio import main
    return main


def _qmail_qmtpd() -> Main:
    from qmtwist.qmtp.stdio import main
    return main


def _qmail_popup() -> Main:
    from qmtwist.pop3.stdio import popup
    return popup


def _qmail_pop3d() -> Main:
    from qmtwist.pop3.stdio import pop3d
    return pop3d


def _tcp_env() -> Main:
    from qmtwist.tools.tcpenv import main
    return main

PROGRAMS: dict[str, Callable[[], Main]] = {
    "qmail-queue": _qmail_queue,
    "qmail-inject": _qmail_inject,
    "sendmail": _sendmail,
    "datemail": _datemail,
    "forward": _forward,
    "preline": _preline,
    "condredirect": _condredirect,
    "bouncesaying": _bouncesaying,
    "except": _except,
    "maildirmake": _maildirmake,
    "maildir2mbox": _maildir2mbox,
    "qmail-qread": _qmail_qread,
    "qmail-qstat": _qmail_qstat,
    "qmail-showctl": _qmail_showctl,
    "qmail-tcpok": _qmail_tcpok,
    "qmail-tcpto": _qmail_tcpto,
    "qlist2": _qlist2,
    "splogger": _splogger,
    "maildirsmtp": _maildirsmtp,
    "maildirqmtp": _maildirqmtp,
    "qmail-smtpd": _qmail_smtpd,
    "qmail-qmtpd": _qmail_qmtpd,
    "qmail-popup": _qmail_popup,
    "qmail-pop3d": _qmail_pop3d,
    "tcp-env": _tcp_env,
}

# Short names accepted as `qmtwist NAME` besides the qmail names.
ALIASES: dict[str, str] = {
    "inject": "qmail-inject",
    "queue": "qmail-queue",
    "qstat": "qmail-qstat",
    "qread": "qmail-qread",
    "showctl": "qmail-showctl",
}
