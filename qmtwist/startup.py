"""
Start-up errors a person can read (docs/behaviour/operations.md 21.5): a bad option or endpoint, an
unusable home, a port that cannot be bound each give one line and exit status 1, never a
traceback.

Three places: L{checkEndpoints} parses the endpoint options while twistd reads the command line
(before anything starts, with the line on stderr); L{oneLineUsage} turns twistd's usage errors
(which would print the whole help first) into one line; L{StartGuard}, the top of the service
tree, turns a failure to start (a listener that cannot bind, already logged as C{alert: cannot
start: ...}) into C{SystemExit(1)}.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from twisted.application import service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

log = Logger(namespace="qmtwist")

#: the options that take a server endpoint string, or C{none}
ENDPOINT_OPTIONS = ("smtp", "qmtp", "pop3", "submission", "submissions", "metrics")


def markReported(e: BaseException) -> BaseException:
    """
    Note on C{e} that its C{alert: cannot start: ...} line has been logged, so L{StartGuard}
    does not log it again (the exception keeps its type for the callers that test it).
    """
    e.qmtwistReported = True  # type: ignore[attr-defined]
    return e


def splitTLS(description: str) -> tuple[str, bool]:
    """
    A C{systemd:} endpoint with qmtwist's C{:tls=yes} (the socket units for 465 and 995): the
    description Twisted parses, and whether the listener wraps the adopted socket in TLS with
    C{control/servercert.pem}. Any other description is returned as it is.
    """
    if description.startswith("systemd:"):
        parts = re.split(r"(?<!\\):", description)
        if "tls=yes" in parts:
            return ":".join(p for p in parts if p != "tls=yes"), True
    return description, False


def endpointProblem(description: str) -> str | None:
    """
    What is wrong with a server endpoint string, as one line, or L{None}. Nothing is bound or
    read: C{tcp:}, C{unix:} and C{systemd:} are parsed by Twisted's own parser; for C{ssl:}
    (whose parser reads the key file) only the port is checked here, and the listener reports
    the rest when it starts.
    """
    kind, _, rest = description.partition(":")
    if kind in ("tcp", "tcp6", "ssl"):
        port = re.split(r"(?<!\\):", rest, maxsplit=1)[0]
        if port.startswith("port="):
            port = port[5:]
        if not port.isdigit() or int(port) > 65535:
            return f"the port must be a number from 0 to 65535, not {port!r}"
        if kind == "ssl":
            return None
    try:
        serverFromString(None, splitTLS(description)[0])
    except KeyError as e:
        return f"no socket named {e.args[0]!r} was handed over (LISTEN_FDNAMES)"
    except IndexError:
        return "no socket with that index was handed over (LISTEN_FDS)"
    except TypeError:  # Twisted's parser called with a missing or an unknown parameter
        return "a parameter is missing or unknown"
    except Exception as e:
        return str(e) or type(e).__name__
    return None


def checkEndpoints(options: Any) -> None:
    """
    Refuse a bad endpoint option (C{--smtp}, C{--qmtp}, C{--pop3}, C{--metrics}) before
    anything starts.

    @raise usage.UsageError: C{--smtp tcp:notaport: the port must be ...}.
    """
    for name in ENDPOINT_OPTIONS:
        value = options.get(name)
        # a listener option may be repeated (a list, qmtwist/listeners.py); --metrics is one
        for one in value if isinstance(value, list) else [value]:
            if not one or one == "none":
                continue
            problem = endpointProblem(one)
            if problem:
                raise usage.UsageError(f"--{name} {one}: {problem}")


def oneLineUsage(parse: Callable[[], None], command: str = "twistd qmtwist") -> None:
    """
    Run C{parse} (an Options' C{parseOptions}); a usage error becomes one line on stderr and
    exit status 1 (twistd itself would print its whole help first).
    """
    try:
        parse()
    except usage.UsageError as e:
        raise SystemExit(f"{command}: {e}") from None


class StartGuard(service.MultiService):
    """
    The top of the daemon's service tree: when a part cannot start, the process exits with
    status 1 after one log line, instead of twistd's traceback. An exception marked by
    L{markReported} was logged by the part; any other exception is logged here as
    C{alert: cannot start: NAME: REASON}.
    """

    def _guard(self, svc: service.IService, start: Callable[[], None]) -> None:
        try:
            start()
        except Exception as e:
            if getattr(e, "qmtwistReported", False):
                raise SystemExit(1) from None
            log.critical("alert: cannot start: {name}: {why}", name=svc.name or type(svc).__name__,
                         why=str(e) or type(e).__name__)
            raise SystemExit(1) from None

    def privilegedStartService(self) -> None:
        for svc in self:
            self._guard(svc, svc.privilegedStartService)

    def startService(self) -> None:
        service.Service.startService(self)
        for svc in self:
            self._guard(svc, svc.startService)


def fatal(line: str) -> None:
    """
    Stop the start with qmail's alert line and exit status 1. Before twistd begins logging
    (while it builds the services) a critical line goes to stderr by itself; afterwards (a .tac
    file, a test) it goes to the log. Either way it is printed once.
    """
    log.critical("{line}", line=line)
    raise SystemExit(1)
