"""
Listener processes: C{--listener-processes N} (docs/behaviour/operations.md 21.7).

One reactor is one core. With N > 0 the daemon binds every listening socket itself, as always,
then starts N front ends, each C{twistd -n qmtwist --no-queue} on the same home, and hands them
the bound sockets (descriptors 3, 4, ... with C{LISTEN_FDS}/C{LISTEN_FDNAMES}, the protocol
systemd uses, so each front end's listeners are C{systemd:} endpoints). The kernel gives each
new connection to one of the front ends; the daemon itself stops accepting and keeps the queue:
preprocessing, scheduling, local and remote delivery, the way qmail-smtpd under tcpserver and
qmail-send are separate processes. A front end injects into the queue as any C{--no-queue}
listener does (files made durable, then C{queue/lock/trigger}), so nothing here is a new
protocol and nothing a front end acknowledges depends on the daemon being alive.

A front end that exits is started again (after 1 s, doubling to 60 s while it keeps dying
young). At stop the daemon sends TERM to each and waits for them before its listeners close.
A front end whose daemon died sees end of file on its standard input and stops. SIGHUP is
passed on, so each front end rereads its control files and rules.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Callable, Mapping, Sequence

from twisted.application import service
from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from qmtwist.listeners import DEFAULTS
from qmtwist.privsep import PACKAGE_ROOT

log = Logger(namespace="qmtwist.frontends")

#: the plugin options a front end takes over unchanged (name -> is a flag)
_PASSED = {"checkpassword": False, "log-format": False, "log-noise": True,
           "smtp-per-ip": False, "qmtp-per-ip": False, "pop3-per-ip": False}
_RULES = ("smtp-rules", "qmtp-rules", "pop3-rules", "submission-rules")
_LIMITS = ("smtp-concurrency", "qmtp-concurrency", "pop3-concurrency")
STOP_WAIT = 10.0  # seconds a front end gets to finish its sessions before KILL
FIRST_DELAY, MAX_DELAY, STABLE = 1.0, 60.0, 60.0


class CannotShare(ValueError):
    """An endpoint whose listener a front end cannot serve as the daemon does."""


def handedOver(description: str, family: str, index: int) -> str:
    """
    The C{systemd:} endpoint under which a front end serves the daemon's listener
    C{description}, bound socket number C{index} of address family C{family} (C{INET},
    C{INET6} or C{UNIX}). An C{ssl:} listener serving C{control/servercert.pem} becomes
    C{:tls=yes} (the same key, wrapped by the same code); one with its own C{privateKey=}
    cannot be shared.

    @raise CannotShare: the reason, for the start-up line.
    """
    tls = ""
    if description.startswith("ssl:"):
        if "privateKey=" in description or "certKey=" in description:
            raise CannotShare(f"{description}: a front end serves only control/servercert.pem; "
                              "drop privateKey= or use a systemd socket")
        tls = ":tls=yes"
    elif description.startswith("systemd:") and ":tls=yes" in description:
        tls = ":tls=yes"
    return f"systemd:domain={family}:index={index}{tls}"


def _family(port: Any) -> str:
    import socket

    fam = port.socket.family  # tcp.Port and unix.Port keep their socket there
    return {socket.AF_INET: "INET", socket.AF_INET6: "INET6", socket.AF_UNIX: "UNIX"}[fam]


def frontEndArguments(options: Mapping[str, Any], twistd: Mapping[str, Any] | None,
                      handed: Mapping[str, list[str]], processes: int) -> list[str]:
    """
    The command line of one front end: twistd's logging options, then C{qmtwist --no-queue}
    with the daemon's home, DNS servers, session options and rules files, its listeners the
    C{handed} endpoints (by protocol, in the daemon's order, so the Nth rules file still goes
    with the Nth listener), and each concurrency limit divided among the C{processes}.
    """
    args = ["-n", "--pidfile="]
    twistd = twistd or {}
    if twistd.get("syslog"):
        args += ["--syslog", f"--prefix={twistd.get('prefix') or 'twisted'}"]
    elif twistd.get("logfile") and twistd.get("logfile") != "-":
        args += ["--logfile", os.path.abspath(twistd["logfile"])]
    args += ["qmtwist", "--no-queue", "--home", str(options["home"])]
    for host, port in options.get("dns") or []:
        args += ["--dns", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    for name, flag in _PASSED.items():
        value = options.get(name)
        if flag and value:
            args.append(f"--{name}")
        elif not flag and value is not None:
            args += [f"--{name}", str(value)]
    for name in _LIMITS:  # the total stays what the operator set
        if options.get(name) is not None:
            args += [f"--{name}", str(max(1, math.ceil(int(options[name]) / processes)))]
    for name in _RULES:
        value = options.get(name) or []
        for path in [value] if isinstance(value, str) else value:
            args += [f"--{name}", os.path.abspath(path)]
    for name in DEFAULTS:
        given = handed.get(name) or ["none"]
        for description in given:
            args += [f"--{name}", description]
    return args


class _FrontEnd(ProcessProtocol):
    """One front end process: its exit goes back to the L{ListenerProcesses}."""

    def __init__(self, owner: ListenerProcesses, slot: int) -> None:
        self.owner = owner
        self.slot = slot
        self.pid: int | None = None
        self.ended: defer.Deferred[None] = defer.Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.owner._ended(self, reason)


class ListenerProcesses(service.Service):
    """
    Starts, restarts and stops the front ends; see the module docstring.

    @param listeners: the daemon's listening services (L{qmtwist.tcpserver.TCPServerService}),
        in the order of C{options}' endpoints.
    @param argv: makes a front end's command line (after the interpreter) from the endpoints
        handed over, by protocol.
    """

    def __init__(self, reactor: Any, count: int, listeners: Sequence[Any],
                 argv: Callable[[dict[str, list[str]]], list[str]],
                 environ: Mapping[str, str] | None = None,
                 python: str = sys.executable) -> None:
        self.reactor = reactor
        self.count = count
        self.listeners = list(listeners)
        self.argv = argv
        self.environ = dict(os.environ if environ is None else environ)
        self.python = python
        self.running_: dict[int, tuple[_FrontEnd, Any]] = {}  # slot -> (protocol, transport)
        self.delays: dict[int, float] = {}
        self.started: dict[int, float] = {}
        self.pendingRestarts: dict[int, Any] = {}
        self.ports: list[Any] = []
        self.handed: dict[str, list[str]] = {}
        self.acceptingHere = True

    def startService(self) -> None:
        super().startService()
        waits = [s._waitingForPort for s in self.listeners
                 if isinstance(getattr(s, "_waitingForPort", None), defer.Deferred)]
        d = defer.gatherResults(waits, consumeErrors=True)
        # a listener that failed stopped the start already, with its own line
        d.addCallbacks(lambda _: self._handOver(), lambda f: None)
        d.addErrback(lambda f: log.failure("alert: cannot start the listener processes", f))

    def _handOver(self) -> None:
        if not self.running:
            return
        for svc in self.listeners:
            port = svc.port
            index = len(self.ports)
            self.handed.setdefault(svc.kind, []).append(
                handedOver(svc.description, _family(port), index))
            self.ports.append(port)
        for slot in range(self.count):
            self._spawn(slot)

    def _accept(self, here: bool) -> None:
        """Accept in the daemon (no listener process runs) or leave it to them."""
        if here == self.acceptingHere:
            return
        self.acceptingHere = here
        for port in self.ports:
            if here:
                port.startReading()
            else:
                port.stopReading()  # the front ends accept; the daemon keeps the queue

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in self.environ.items()
               if not k.startswith("LISTEN_") and k != "NOTIFY_SOCKET"}  # READY is ours
        env["LISTEN_FDS"] = str(len(self.ports))
        env["LISTEN_FDNAMES"] = ":".join(
            f"{kind}{i}" for kind, names in self.handed.items() for i in range(len(names)))
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = PACKAGE_ROOT + (":" + old if old else "")  # this very checkout
        return env

    def _spawn(self, slot: int) -> None:
        self.pendingRestarts.pop(slot, None)
        proto = _FrontEnd(self, slot)
        childFDs: dict[int, Any] = {0: "w", 1: 1, 2: 2}
        for i, port in enumerate(self.ports):
            childFDs[3 + i] = port.fileno()
        args = [self.python, "-m", "qmtwist.listenerprocess", *self.argv(self.handed)]
        try:
            transport = self.reactor.spawnProcess(proto, self.python, args,
                                                  env=self._environment(), path="/",
                                                  childFDs=childFDs)
        except OSError as e:  # no process (EMFILE, EAGAIN): try again as after an exit
            self.started[slot] = self.reactor.seconds()
            self._ended(proto, Failure(e))
            return
        self._accept(False)
        proto.pid = transport.pid
        self.running_[slot] = (proto, transport)
        self.started[slot] = self.reactor.seconds()
        log.info("frontend: started listener process {pid}", pid=transport.pid)

    def _ended(self, proto: _FrontEnd, reason: Failure) -> None:
        slot = proto.slot
        self.running_.pop(slot, None)
        status = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        how = (f"signal {sig}" if sig else f"status {status}" if proto.pid is not None
               else f"no start: {reason.getErrorMessage()}")
        if not self.running:
            log.info("frontend: listener process {pid} exited with {how}",
                     pid=proto.pid, how=how)
            return
        ranFor = self.reactor.seconds() - self.started.get(slot, 0.0)
        delay = FIRST_DELAY if ranFor >= STABLE else min(
            MAX_DELAY, self.delays.get(slot, FIRST_DELAY / 2) * 2)
        self.delays[slot] = delay
        log.warn("warning: listener process {pid} exited with {how}; starting another in "
                 "{delay:g}s", pid=proto.pid, how=how, delay=delay)
        if not self.running_:  # nobody accepts: the daemon does, until one runs again
            self._accept(True)
        self.pendingRestarts[slot] = self.reactor.callLater(delay, self._spawn, slot)

    def hup(self) -> None:
        """SIGHUP: each front end rereads its control files and rules."""
        for _, transport in list(self.running_.values()):
            _signal(transport, "HUP")

    def pids(self) -> list[int]:
        """The front ends' process ids (tests, C{qmtwist ctl})."""
        return [t.pid for _, t in self.running_.values()]

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        for call in self.pendingRestarts.values():
            if call.active():
                call.cancel()
        self.pendingRestarts.clear()
        waits = []
        for proto, transport in list(self.running_.values()):
            _signal(transport, "TERM")
            kill = self.reactor.callLater(STOP_WAIT, _signal, transport, "KILL")
            proto.ended.addBoth(_cancel, kill)
            waits.append(proto.ended)
        return defer.gatherResults(waits).addCallback(lambda _: None)


def _cancel(result: object, call: Any) -> object:
    if call.active():
        call.cancel()
    return result


def _signal(transport: Any, name: str) -> None:
    try:
        transport.signalProcess(name)
    except (OSError, ProcessLookupError):
        pass
    except Exception as e:  # ProcessExitedAlready: it is gone already
        if type(e).__name__ != "ProcessExitedAlready":
            raise
