"""
The daemon's log observer (docs/behaviour/queue-control.md 17.9, docs/commands.md "Logs"): twistd's
own text log, or JSON lines with C{--log-format json}; Twisted's per-port noise left out unless
C{--log-noise}; and C{HOME/run/logfile}, which tells C{qmtwist ctl why} where the log is.

twistd builds its observer after the plugin's C{makeService} returned, and takes an
L{ILogObserver} set on the application when there is one (unless C{--logger} was given). So
L{ObserverTop}, the service C{makeService} returns, sets the observer on the application when
twistd attaches it; a .tac file calls L{forTac}. The observer writes twistd's own text lines (or
JSON) into twistd's own file (C{--logfile}, with its rotation and SIGUSR1) or standard output,
buffered (L{qmtwist.logbuffer}, docs/behaviour/operations.md 21.4.1); C{--syslog} is twistd's
syslog observer under the noise filter.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Mapping, TextIO

from twisted.application import service
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LegacyLogObserverWrapper,
    PredicateResult,
    formatEvent,
    jsonFileLogObserver,
)
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile
from zope.interface import provider

from qmtwist.logbuffer import (
    BufferedObserver,
    LineBuffer,
    classicText,
    isNoiseText,
    jsonText,
    onShutdown,
)


def isNoise(event: dict[str, Any]) -> bool:
    """
    Twisted's per-factory, per-port and per-DNS-query lines: "X starting on N", "Starting
    factory <...>" (of any factory, qmtwist's too), "Starting protocol <...DNSDatagramProtocol
    ...>" and their "Stopping"/"Closed" twins.
    """
    return isNoiseText(event, formatEvent(event))


@provider(ILogFilterPredicate)
def _dropNoise(event: dict[str, Any]) -> PredicateResult:
    return PredicateResult.no if isNoise(event) else PredicateResult.maybe


def jsonLines(outFile: TextIO) -> ILogObserver:
    """
    One JSON object per line (twisted.logger's C{eventAsJSON}, readable back with
    C{eventsFromJSONLogFile}), plus C{"text"}: the line as the text log shows it (qmail's text).
    """
    inner = jsonFileLogObserver(outFile, recordSeparator="")

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        inner(dict(event, text=formatEvent(event)))

    return observe


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def logFileName(config: Any) -> str | None:
    """The file twistd logs to for its options C{config}, or None for stdout or syslog."""
    name = config.get("logfile") or ""
    if config.get("syslog") or name == "-" or (not name and config.get("nodaemon")):
        return None
    return os.path.abspath(name or "twistd.log")


def _debugWanted() -> bool:
    """Debug events are observed (and so formatted) only when asked: QMTWIST_LOG_DEBUG, or the
    SMTP state trace QMTWIST_TRACE_SMTP, which logs at debug level."""
    return bool(os.environ.get("QMTWIST_LOG_DEBUG") or os.environ.get("QMTWIST_TRACE_SMTP"))


def daemonObserver(config: Any, fmt: str = "text", noise: bool = False,
                   reactor: Any = None) -> ILogObserver:
    """
    The observer for twistd's options C{config}: text or JSON, noise filtered unless asked,
    buffered (docs/behaviour/operations.md 21.4.1) into twistd's log file (its rotation at 1 MB,
    and on SIGUSR1 after the buffer was written) or standard output; C{--syslog} unbuffered.
    """
    if config.get("syslog"):
        from twisted.scripts._twistd_unix import UnixAppLogger

        observer: Any = UnixAppLogger(config)._getLogObserver()
        if not ILogObserver.providedBy(observer):
            observer = LegacyLogObserverWrapper(observer)  # --syslog's observer
        if noise:
            return observer  # type: ignore[no-any-return]
        return FilteringLogObserver(observer, [_dropNoise])  # type: ignore[list-item]
    if config.get("logfile") == "-" and not config.get("nodaemon"):
        sys.exit("Daemons cannot log to stdout, exiting!")  # twistd's own refusal
    reactor = reactor if reactor is not None else _reactor()
    name = logFileName(config)
    target: Any = sys.stdout if name is None else LogFile.fromFullPath(name)
    buffer = LineBuffer(target, reactor)
    if name is not None:
        def rotate() -> None:
            buffer.flush()
            target.rotate()

        signal.signal(signal.SIGUSR1, lambda *a: reactor.callFromThread(rotate))
    onShutdown(buffer, reactor)
    render = jsonText if fmt == "json" else classicText()
    return BufferedObserver(buffer, render, noise=noise, debug=_debugWanted())


def writeLogPointer(path: str, logFile: str | None) -> None:
    """Write C{HOME/run/logfile} (the log's absolute path), or remove it when there is no file."""
    if logFile is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(logFile + "\n")
    os.replace(tmp, path)


def forTwistd(top: service.MultiService, options: Any, pointer: str) -> service.MultiService:
    """
    What C{makeService} returns: C{top} under an L{ObserverTop} with the observer of the plugin
    options (C{--log-format}, C{--log-noise}) and twistd's (C{options.parent}), and the log
    pointer C{pointer} (C{HOME/run/logfile}) written. Without twistd (a .tac file, a test)
    C{top} itself. twistd's C{--logger} takes precedence over both options.
    """
    config = getattr(options, "parent", None)
    if config is None:
        return top
    custom = bool(config.get("logger"))
    writeLogPointer(pointer, None if custom else logFileName(config))
    outer = ObserverTop(None if custom else daemonObserver(
        config, options.get("log-format") or "text", bool(options.get("log-noise"))))
    top.setServiceParent(outer)
    return outer


class ObserverTop(service.MultiService):
    """The service twistd runs: sets C{observer} on the application it is attached to."""

    def __init__(self, observer: ILogObserver | None) -> None:
        super().__init__()
        self.observer = observer

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if self.observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)


def twistdConfig(argv: list[str] | None = None) -> Any:
    """
    twistd's options of this process (C{sys.argv}) for a .tac file, which twistd does not give
    them: C{--logfile}, C{-n}, C{--syslog}, C{--logger}. None when they do not parse (not twistd).
    """
    from twisted.scripts.twistd import ServerOptions

    class Again(ServerOptions):  # type: ignore[misc, valid-type]
        def opt_reactor(self, name: str) -> None:
            """twistd installed it already."""

        opt_r = opt_reactor

    config = Again()
    try:
        config.parseOptions(sys.argv[1:] if argv is None else argv)
    except (SystemExit, Exception):
        return None
    return config


def forTac(application: Any, top: service.Service, pointer: str,
           env: Mapping[str, str] | None = None) -> None:
    """
    A .tac file's log as C{twistd -n qmtwist}'s: the observer of L{daemonObserver} on
    C{application} (QMTWIST_LOG_FORMAT=json, QMTWIST_LOG_NOISE=1 as C{--log-format json},
    C{--log-noise}), the log pointer C{pointer} written, and C{top} attached.
    """
    env = os.environ if env is None else env
    config = twistdConfig()
    top.setServiceParent(application)
    if config is None or config.get("logger"):
        writeLogPointer(pointer, None)
        return
    writeLogPointer(pointer, logFileName(config))
    application.setComponent(ILogObserver, daemonObserver(
        config, env.get("QMTWIST_LOG_FORMAT") or "text", bool(env.get("QMTWIST_LOG_NOISE"))))
