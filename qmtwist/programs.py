"""
The qmail programs qmtwist provides under their qmail names (docs/behaviour/home.md 1.3).

Each entry maps a program name to C{"module:function"}; the function is called as
C{main(argv, env)} with a L{qmtwist.tools.base.ProgramEnv} and returns the exit code.
C{qmtwist setup} writes a launcher in C{HOME/bin} for each program whose module is installed.
"""

PROGRAMS: dict[str, str] = {
    "qmail-queue": "qmtwist.tools.qmailqueue:main",
    "qmail-inject": "qmtwist.tools.inject:main",
    "sendmail": "qmtwist.tools.sendmail:main",
    "datemail": "qmtwist.tools.datemail:main",
    "forward": "qmtwist.tools.forward:main",
    "preline": "qmtwist.tools.preline:main",
    "condredirect": "qmtwist.tools.condredirect:main",
    "bouncesaying": "qmtwist.tools.bouncesaying:main",
    "except": "qmtwist.tools.except_:main",
    "maildirmake": "qmtwist.tools.maildirmake:main",
    "maildir2mbox": "qmtwist.tools.maildir2mbox:main",
    "qmail-qread": "qmtwist.tools.qread:main",
    "qmail-qstat": "qmtwist.tools.qstat:main",
    "qmail-showctl": "qmtwist.tools.showctl:main",
    "qmail-tcpok": "qmtwist.tools.tcpok:main",
    "qmail-tcpto": "qmtwist.tools.tcpto:main",
    "qlist2": "qmtwist.tools.qlist2:main",
    "splogger": "qmtwist.tools.splogger:main",
    "maildirsmtp": "qmtwist.tools.maildirsmtp:main",
    "maildirqmtp": "qmtwist.tools.maildirqmtp:main",
    "qmail-smtpd": "qmtwist.smtp.stdio:main",
    "qmail-qmtpd": "qmtwist.qmtp.stdio:main",
    "qmail-popup": "qmtwist.pop3.stdio:popup",
    "qmail-pop3d": "qmtwist.pop3.stdio:pop3d",
    "tcp-env": "qmtwist.tools.tcpenv:main",
}

# Short names accepted as `qmtwist NAME` besides the qmail names.
ALIASES: dict[str, str] = {
    "inject": "qmail-inject",
    "queue": "qmail-queue",
    "qstat": "qmail-qstat",
    "qread": "qmail-qread",
    "showctl": "qmail-showctl",
}
