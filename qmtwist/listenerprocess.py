"""
One listener process of C{--listener-processes} (L{qmtwist.frontends}; docs/behaviour/operations.md
21.7): C{python -m qmtwist.listenerprocess TWISTD-ARGS} runs twistd with those arguments on the
sockets its daemon handed over.

The sockets come as systemd would give them (C{LISTEN_FDS}, C{LISTEN_FDNAMES}), but their
C{LISTEN_PID} can only be known here, after the daemon's fork and exec: it is set before anything
imports C{twisted.internet.endpoints}, whose C{systemd:} parser reads the environment once, at
import. Standard input is a pipe from the daemon; its end of file means the daemon is gone, and
this process stops as on TERM (its sessions end; nothing it acknowledged depends on the daemon).
"""

from __future__ import annotations

import os
import sys


def _watchDaemon() -> None:
    """Stop the reactor when the daemon's end of standard input closes."""
    import stat

    from twisted.internet import reactor
    from twisted.internet.abstract import FileDescriptor
    from twisted.internet.error import ReactorNotRunning

    try:
        if not stat.S_ISFIFO(os.fstat(0).st_mode):
            return  # started by hand: nothing to watch
    except OSError:
        return

    class Watch(FileDescriptor):
        gone = False

        def fileno(self) -> int:
            return 0

        def doRead(self) -> None:
            try:
                data = os.read(0, 512)
            except BlockingIOError:
                return
            if not data:
                self.connectionLost(None)

        def connectionLost(self, reason: object) -> None:
            # end of file, or the hang-up epoll reports for it
            self.stopReading()
            if not self.gone:
                self.gone = True
                try:
                    reactor.stop()  # type: ignore[attr-defined]
                except ReactorNotRunning:
                    pass  # a TERM from the daemon is stopping it already

    os.set_blocking(0, False)
    Watch(reactor).startReading()


def main(argv: list[str] | None = None) -> None:
    """Set C{LISTEN_PID}, then run twistd with C{argv} (default: this process's arguments)."""
    if "LISTEN_FDS" in os.environ:
        os.environ["LISTEN_PID"] = str(os.getpid())
    from twisted.internet import reactor
    from twisted.scripts.twistd import run

    reactor.callWhenRunning(_watchDaemon)  # type: ignore[attr-defined]
    sys.argv = ["twistd", *(sys.argv[1:] if argv is None else argv)]
    run()


if __name__ == "__main__":
    main()
