"""
C{twistd qmtwist}: the options of docs/commands.md and the service tree they build.

This module (and the .tac files, through L{buildServices}) is the only place that creates
concrete objects and wires them: listeners -> injector -> queue service -> delivery agents. Every
part is imported here directly, so a part that cannot be imported stops the daemon at once. The
injector's commit observer and the SMTP listener's SIGHUP hook (C{Context.reloaders}) are added
here, not by the parts themselves.
"""

from __future__ import annotations

import os
import signal
import sys
from functools import cache, partial
from typing import Any, Callable

from attrs import define
from twisted.application import service, strports
from twisted.logger import Logger
from twisted.python import usage

from qmtwist.context import ControlCache, Context
from qmtwist.dirwatch import DirWatches
from qmtwist.errors import ControlError
from qmtwist.home import Home, chooseHome, setup
from qmtwist.inbound.writer import InboundVerifier
from qmtwist.interfaces import IDeliveryAgent
from qmtwist.listeners import SUBMISSION, ListenerOptions, endpoints, settings
from qmtwist.local.agent import LocalAgent, interpreterReachable
from qmtwist.logformat import forTwistd
from qmtwist.logstory import logPointer
from qmtwist.metrics import Metrics
from qmtwist.metricsweb import makeMetricsService, observe
from qmtwist.pop3.listener import makePOP3Service
from qmtwist.ptr import makeHostLookup
from qmtwist.qmtp.listener import makeQMTPService
from qmtwist.ctlclient import controlSocket
from qmtwist.queue.admin import QueueAdmin
from qmtwist.queue.commit import Injector
from qmtwist.queue.ctlserver import ControlFactory, ControlService
from qmtwist.queue.service import QueueService
from qmtwist.queue.socketserver import QueueSocketFactory, prepareSocketPath
from qmtwist.queue.store import pokeTrigger
from qmtwist.queue.trigger import TriggerReader
from qmtwist.remote.agent import RemoteAgent
from qmtwist.remote.concurrency import descriptorWarning
from qmtwist.remote.mx import makeResolver
from qmtwist.frontends import CannotShare, ListenerProcesses, frontEndArguments, handedOver
from qmtwist.sdnotify import NotifyService
from qmtwist.smtp.listener import makeSMTPService, warnIfNoRcpthosts
from qmtwist.threadrunner import ThreadRunner
from qmtwist.startup import StartGuard, checkEndpoints, fatal, oneLineUsage
from qmtwist.smtp.submission import Authority, makeSubmissionService, warnIfNoCertificate

log = Logger(namespace="qmtwist")


class Options(ListenerOptions, usage.Options):
    """twistd qmtwist's options (docs/commands.md)."""

    synopsis = "[options]"
    longdesc = "The qmail mail system: SMTP, QMTP and POP3 listeners and the queue service."
    optFlags = [["no-queue", None, "run listeners only (another process runs the queue)"],
                ["log-noise", None, "keep Twisted's per-port 'starting on' and factory lines"]]
    optParameters = [
        ["home", None, None, "the home directory (default: $QMTWIST_HOME or ./qmtwist-home)"],
        ["smtp-concurrency", None, 40, "most simultaneous SMTP sessions", int],
        ["qmtp-concurrency", None, 40, "most simultaneous QMTP sessions", int],
        ["pop3-concurrency", None, 40, "most simultaneous POP3 sessions", int],
        ["smtp-per-ip", None, 10, "most SMTP sessions of one client address (0: no limit)", int],
        ["qmtp-per-ip", None, 10, "most QMTP sessions of one client address (0: no limit)", int],
        ["pop3-per-ip", None, 10, "most POP3 sessions of one client address (0: no limit)", int],
        ["checkpassword", None, None, "POP3 checkpassword program (default: built-in)"],
        ["log-format", None, "text", "log lines as text (twistd's) or json (one object a line)"],
        ["metrics", None, "none", "Prometheus /metrics endpoint (e.g. tcp:9125:interface=127.0.0.1)"],
        ["listener-processes", None, 0, "accept in N separate listener processes; this one "
         "keeps the queue (0: accept here)", int],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["dns"] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        # a bad option is one line and exit 1, not twistd's whole help (operations.md 21.5)
        oneLineUsage(lambda: super(Options, self).parseOptions(options))

    def opt_dns(self, value: str) -> None:
        """DNS server HOST:PORT for remote delivery and =host rules (repeatable; default: the
        system's)."""
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit():
            raise usage.UsageError(f"--dns wants HOST:PORT, not {value!r}")
        self["dns"].append((host.strip("[]"), int(port)))

    def postOptions(self) -> None:
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError(f"--log-format wants text or json, not {self['log-format']!r}")
        checkEndpoints(self)


class SignalService(service.Service):
    """
    Turns SIGHUP, SIGALRM and SIGTERM/SIGINT into calls on the reactor thread, and owns the pid
    file. The first TERM stops the reactor (the services then stop, waiting for deliveries); the
    second calls C{abandon} (the queue service stops waiting); a third exits at once. The pid
    file stays until the reactor has shut down, so C{qmtwist ctl term} reaches a daemon that is
    still waiting (docs/behaviour/queue.md 6.1).
    """

    def __init__(self, reactor: Any, home: Home, hup: Callable[[], None],
                 alrm: Callable[[], None], pidfile: str | None = None,
                 abandon: Callable[[], None] | None = None) -> None:
        self.reactor = reactor
        self.pidfile = pidfile
        self.onHup = hup
        self.onAlrm = alrm
        self.onAbandon = abandon

    def startService(self) -> None:
        super().startService()
        signal.signal(signal.SIGHUP, lambda *a: self.reactor.callFromThread(self.onHup))
        signal.signal(signal.SIGALRM, lambda *a: self.reactor.callFromThread(self.onAlrm))
        # TERM and INT stop cleanly with exit 0 (twistd's own handler would re-raise the
        # signal at exit); a second one while deliveries finish abandons them (docs/behaviour/queue.md 6.1).
        # Installed once the reactor runs, after the reactor installed its own.
        self.reactor.callLater(0, self._installTerm)
        if self.pidfile:
            tmp = self.pidfile + ".new"
            with open(tmp, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.replace(tmp, self.pidfile)
            # not in stopService: that runs at the first TERM, long before the deliveries end
            self.reactor.addSystemEventTrigger("after", "shutdown", self._removePidfile)

    _terms = 0

    def _installTerm(self) -> None:
        signal.signal(signal.SIGTERM, self._term)
        signal.signal(signal.SIGINT, self._term)

    def _term(self, signum: int, frame: Any) -> None:
        self._terms += 1
        if self._terms == 1:
            self.reactor.callFromThread(self.reactor.stop)
            return
        if self._terms == 2 and self.onAbandon is not None:
            self.reactor.callFromThread(self.onAbandon)
            return
        log.info("status: exiting")
        self._removePidfile()
        os._exit(0)

    def _removePidfile(self) -> None:
        """Remove the pid file if it still names this process (the reactor is done by now)."""
        if not self.pidfile:
            return
        try:
            with open(self.pidfile) as f:
                if f.read().strip() == str(os.getpid()):
                    os.unlink(self.pidfile)
        except OSError:
            pass


class TriggerService(service.Service):
    """Reads C{queue/lock/trigger} so injections by other processes wake the queue at once."""

    def __init__(self, reactor: Any, path: str, onTrigger: Callable[[], Any]) -> None:
        self.reactor = reactor
        self.path = path
        self.onTrigger = onTrigger
        self.reader: TriggerReader | None = None

    def startService(self) -> None:
        super().startService()
        self.reader = TriggerReader(self.reactor, self.path, self.onTrigger)
        self.reactor.addReader(self.reader)

    def stopService(self) -> None:
        super().stopService()
        if self.reader is not None:
            self.reactor.removeReader(self.reader)
            self.reader.connectionLost(None)
            self.reader = None


@define
class Built:
    """What L{buildServices} made, for .tac files and tests."""

    top: service.MultiService
    context: Context
    queue: QueueService | None
    metrics: Metrics | None = None  # its stats() is what ctl stats shows


def buildServices(options: dict[str, Any], reactor: Any = None) -> Built:
    """Build the whole mail system for C{options} (an L{Options} or an equivalent dict)."""
    if reactor is None:
        from twisted.internet import reactor as _reactor
        reactor = _reactor
    home = chooseHome(options.get("home"))
    if not home.isComplete():
        try:
            if setup(home):
                log.info("setup: created {home}", home=home.path)
        except OSError as e:
            fatal(f"alert: cannot start: unable to switch to queue directory: {e}")
    # control/ and the rules files watched with inotify, so that an unchanged file costs no
    # thread job per connection or delivery (docs/behaviour/control.md 2.4)
    watches = DirWatches(reactor)
    try:
        controls = ControlCache(home, watches)
    except ControlError as e:
        fatal(str(e) if "cannot start" in str(e) else f"alert: cannot start: {e}")
    runInThread = ThreadRunner(reactor)  # every blocking file call of the daemon (threadrunner.py)
    top = StartGuard()  # a part that cannot start: one line, exit 1 (operations.md 21.5)
    queue: QueueService | None = None
    noQueue = bool(options.get("no-queue"))
    listeners: list[Any] = []  # the SMTP and QMTP services, for the remote self check

    injector = Injector(home.queue, home.control, reactor, runInThread)
    metrics = Metrics(reactor)  # its stats() is also what ctl stats shows
    ctx = Context(home, reactor, injector, controls, runInThread, watches=watches)
    watches.setServiceParent(top)  # closes the descriptors when the daemon stops
    # one resolver (--dns) for remote delivery's MX lookups and the listeners' PTR lookups,
    # made when the first of them needs it (a listeners-only daemon may never need one)
    resolver = cache(lambda: makeResolver(reactor, options.get("dns") or None))
    hostLookup = makeHostLookup(reactor, resolver)

    def reloadListeners() -> None:
        """SIGHUP, once the controls are reread: each listener rereads its rules."""
        for reload in ctx.reloaders:
            reload()

    if not noQueue:
        agents = _makeAgents(ctx, options, listeners, resolver())
        queue = QueueService(home.queue, controls, reactor, runInThread, agents, injector)
        # every commit round of this process goes to the queue service (queue.md 5.5)
        injector.addObserver(queue.preprocess)
        try:
            queue.lockMutex()
        except RuntimeError:
            raise SystemExit(1)  # lockMutex logged the alert line
        queue.setServiceParent(top)
        TriggerService(reactor, home.queue.trigger, queue.scanTodo).setServiceParent(top)

        def hup() -> None:
            queue.hup().addCallback(lambda _: reloadListeners())

        SignalService(reactor, home, hup, queue.alrm, home.pidfile,
                      abandon=queue.abandon).setServiceParent(top)
        prepareSocketPath(home.queueSocket)
        sock = strports.service(f"unix:{home.queueSocket}:mode=666", QueueSocketFactory(injector))
        sock.setServiceParent(top)
        # qmtwist ctl queue/hold/...: stats= the metrics object's stats when there is one
        ControlService(reactor, controlSocket(home), ControlFactory(QueueAdmin(queue), stats=metrics.stats)
                       ).setServiceParent(top)
        if os.getuid() == 0 and not interpreterReachable(sys.executable):
            log.warn("warning: {python} is not reachable by other users: HOME/bin programs in "
                     ".qmail pipes (preline, forward, qmail-inject) will fail when run as the "
                     "mail user", python=sys.executable)
        warning = descriptorWarning(controls.snapshot.concurrencyremote)
        if warning:
            log.warn("{line}", line=warning)
    else:
        # the queue service of another process learns of commits through lock/trigger
        injector.addObserver(lambda ids: pokeTrigger(home.queue))

        def hupListeners() -> None:
            controls.reloadOffThread(runInThread).addCallback(lambda _: reloadListeners())
        SignalService(reactor, home, hupListeners, lambda: None).setServiceParent(top)

    served: list[Any] = []  # every listener, for the metrics
    # the MX listener verifies mail of non-relay clients (docs/behaviour/authentication.md)
    makers: tuple[tuple[str, Callable[..., Any]], ...] = (
        ("smtp", partial(makeSMTPService, inbound=InboundVerifier(ctx, resolver))),
        ("qmtp", makeQMTPService), ("pop3", makePOP3Service),
        ("submission", makeSubmissionService), ("submissions", makeSubmissionService))
    authority = cache(lambda: Authority.forContext(ctx))  # shared by the submission listeners
    for name, make in makers:
        # each option may be repeated: a listener per endpoint (qmtwist/listeners.py)
        for i, endpoint in enumerate(endpoints(options, name)):
            rules, concurrency, perIP = settings(options, name, i, home.rules)
            if name == "pop3":
                svc = make(ctx, endpoint, rules, concurrency, options.get("checkpassword"),
                           lookupHost=hostLookup, perIP=perIP)
            elif name in SUBMISSION:
                svc = make(ctx, name, endpoint, rules, concurrency, authority(),
                           lookupHost=hostLookup, perIP=perIP)
            else:
                svc = make(ctx, endpoint, rules, concurrency, lookupHost=hostLookup, perIP=perIP)
                listeners.append(svc)
            if i:
                svc.setName(f"{name}-{i + 1}")  # a MultiService wants unique names
            if name == "smtp" and i == 0:
                # docs/behaviour/smtp.md 7.5's warning, again on every SIGHUP
                ctx.reloaders.append(partial(warnIfNoRcpthosts, ctx))
            if name in SUBMISSION:  # submission.md 16.1's warning, again on every SIGHUP
                ctx.reloaders.append(partial(warnIfNoCertificate, ctx, name, endpoint))
            ctx.reloaders.append(svc.reload)  # its rules file, on SIGHUP
            svc.setServiceParent(top)
            served.append(svc)
    count = int(options.get("listener-processes") or 0)
    if count > 0:  # the listeners' sockets go to N front ends (docs/behaviour/operations.md 21.7)
        _addFrontEnds(top, ctx, options, served, count)
    observe(metrics, reactor, injector, queue, served)
    if (options.get("metrics") or "none") != "none":
        makeMetricsService(options["metrics"], metrics).setServiceParent(top)
    NotifyService(top).setServiceParent(top)  # last: READY=1 once all listen; first to stop
    return Built(top, ctx, queue, metrics)


def _addFrontEnds(top: service.MultiService, ctx: Context, options: dict[str, Any],
                  served: list[Any], count: int) -> None:
    """The L{ListenerProcesses} that take over C{served}'s sockets, or one line and exit 1."""
    for svc in served:
        try:
            handedOver(svc.description, "INET", 0)
        except CannotShare as e:
            fatal(f"alert: cannot start: --listener-processes: {e}")
    given = dict(options, home=ctx.home.path)
    twistd = getattr(options, "parent", None)
    frontEnds = ListenerProcesses(
        ctx.reactor, count, served, lambda handed: frontEndArguments(given, twistd, handed, count))
    ctx.reloaders.append(frontEnds.hup)
    frontEnds.setServiceParent(top)


def _makeAgents(ctx: Context, options: dict[str, Any], listeners: list[Any],
                resolver: Any) -> dict[str, IDeliveryAgent]:
    """
    The delivery agent of each channel. Remote delivery gets the shared resolver and the live
    list of SMTP and QMTP listeners (filled in later), for its MX self check.
    """
    return {
        "local": LocalAgent(ctx),
        "remote": RemoteAgent(ctx, resolver,
                              localAddresses=partial(listenerAddresses, options, listeners)),
    }


def listenerAddresses(options: dict[str, Any],
                      services: list[Any] | tuple[Any, ...] = ()) -> tuple[str, ...]:
    """
    The addresses the SMTP and QMTP listeners are bound to, so remote delivery recognises an MX
    that points back at us (docs/behaviour/remote.md 11.2). A listening service tells its real
    address (a C{systemd:} socket too); otherwise it comes from the endpoint string
    (C{qmtwist.remote.ipme.endpointAddresses}). C{0.0.0.0} or C{::} (a wildcard listener) stands
    for all of the machine's interface addresses.
    """
    from qmtwist.remote import ipme

    out: list[str] = []
    for name in ("smtp", "qmtp"):
        # the Nth service of a name listens on its Nth endpoint (they are built in order)
        named = [s for s in services if getattr(s, "kind", getattr(s, "name", None)) == name]
        for i, endpoint in enumerate(endpoints(options, name)):
            host = ipme.boundAddress(getattr(named[i], "port", None)) if i < len(named) else None
            out.extend([host] if host is not None else ipme.endpointAddresses(endpoint))
    return tuple(dict.fromkeys(out))


def makeService(options: Options) -> service.IService:
    """twistd's entry point (see twisted/plugins/qmtwist_plugin.py)."""
    built = buildServices(options)
    return forTwistd(built.top, options, logPointer(built.context.home))
