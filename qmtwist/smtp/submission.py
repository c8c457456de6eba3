"""
Message submission (RFC 6409) on C{--submission} (STARTTLS) and C{--submissions} (implicit TLS,
RFC 8314): the SMTP session of L{qmtwist.smtp.server} with AUTH (docs/behaviour/submission.md 16).

L{SubmissionServer} is an L{SMTPServer} that
  - offers C{AUTH PLAIN LOGIN} in EHLO once the channel is encrypted, and answers C{AUTH} before
    TLS with 538 (L{qmtwist.smtp.auth} parses the mechanisms; the login goes through a
    C{twisted.cred} portal over C{users/passwd}, scrypt on a thread);
  - answers a failed login with 535 after L{AUTH_DELAY} seconds on the session's clock, and the
    third failure of a session with 421 and the close; failures also count per client address in
    a L{FailureLimiter} shared by all submission listeners, which refuses (454) while it says so;
  - refuses MAIL before AUTH (530) and, after it, a sender that is not the user's (553; the
    check is L{qmtwist.smtp.senders.SenderCheck}, on a thread);
  - relays once authenticated: the session policy (L{qmtwist.policy.SessionPolicy.authenticated})
    knows the user, and the Received line names it.
The reply texts are L{qmtwist.smtp.authreplies}; each AUTH attempt is logged
(L{qmtwist.smtp.sessionlog.logAuth}).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

from attrs import define
from twisted.application.service import IService
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import deferLater
from twisted.logger import Logger

from qmtwist.ptr import LookupHost
from qmtwist.ratelimit import FailureLimiter, addressKey
from qmtwist.smtp import authreplies as A
from qmtwist.smtp.auth import Cancelled, Credentials, Exchange, Malformed, UnknownMechanism
from qmtwist.smtp.auth import login, makePortal
from qmtwist.smtp.listener import SMTPFactory
from qmtwist.smtp.extensions import mailParameters, screen
from qmtwist.smtp.parse import parseAddress
from qmtwist.smtp.senders import SenderCheck
from qmtwist.smtp.server import SMTPServer
from qmtwist.smtp.sessionlog import logAuth
from qmtwist.smtp.state import State
from qmtwist.tcpserver import makeListener

#: seconds before a failed login is answered (RFC 4954 leaves it to the server)
if TYPE_CHECKING:
    from qmtwist.context import Context

log = Logger(namespace="qmtwist.submission")

AUTH_DELAY = 1.0
#: docs/behaviour/submission.md 16.1: a STARTTLS listener without a certificate
NOCERT_WARNING = ("warning: {name} on {endpoint} has no control/servercert.pem: STARTTLS and "
                  "AUTH are not offered, so no one can submit")
#: the failure of a session that ends it (421)
MAX_FAILURES = 3
#: failed logins of one client address (any session) within LIMIT_WINDOW seconds that start a
#: refusal period of the address limiter (454 without a check; 30 s, doubling)
LIMIT_FAILURES, LIMIT_WINDOW = 10, 600.0


@define
class Authority:
    """
    What every submission session of a daemon shares.

    @ivar portal: the C{twisted.cred} portal over C{users/passwd}.
    @ivar senders: which senders a user may use.
    @ivar limiter: failed logins per client address.
    @ivar runInThread: for the sender check.
    @ivar delay: L{AUTH_DELAY}.
    """

    portal: Portal
    senders: SenderCheck
    limiter: FailureLimiter
    runInThread: Callable[[Callable[[], Any]], Deferred[Any]]
    delay: float = AUTH_DELAY

    @classmethod
    def forContext(cls, ctx: Context) -> Authority:
        """The one of a daemon: portal and checks over C{ctx.home}, the limiter on its reactor."""
        return cls(makePortal(ctx.home, ctx.runInThread), SenderCheck(ctx.home),
                   FailureLimiter(ctx.reactor, LIMIT_FAILURES, LIMIT_WINDOW), ctx.runInThread)


class SubmissionServer(SMTPServer):
    """
    One submission session (see the module docstring).

    @param authority: the shared L{Authority}.
    @ivar failures: failed logins in this session.
    """

    log = Logger(namespace="qmtwist.submission")
    name = "submission"

    def __init__(self, injector: Any, control: Any, clock: Any, certificate: Any,
                 authority: Authority) -> None:
        super().__init__(injector, control, clock, certificate)
        self.authority = authority
        self.failures = 0
        self._sasl: Exchange | None = None

    def extensions(self) -> list[bytes]:
        return [A.EHLO_AUTH] if self.tls else []

    def _command(self, line: bytes) -> None:
        exchange = self._sasl
        if exchange is None:
            super()._command(line)
        else:  # a SASL response: never parsed as a command, never logged
            self._await(self._step(lambda: exchange.respond(line)))

    def _key(self) -> str:
        return addressKey(self.env.get("TCPREMOTEIP", b""))

    # -- AUTH ------------------------------------------------------------------------------

    def smtp_AUTH(self, arg: bytes) -> Deferred[None] | None:
        if not self.tls:
            self._reply(A.R_AUTH_NEEDTLS)
            return None
        if self.policy.user is not None:
            self._reply(A.R_AUTH_AGAIN)
            return None
        if self.state is State.MAIL:
            self._reply(A.R_AUTH_INMAIL)
            return None
        mechanism, _, initial = arg.strip().partition(b" ")
        try:
            exchange = Exchange(mechanism, initial.strip() or None)
        except UnknownMechanism:
            self._reply(A.R_AUTH_MECH)
            return None
        if self.authority.limiter.refusedFor(self._key()) > 0:
            logAuth(self.log, self.env, exchange.mechanism, None, False,
                    "too many failed logins from this address")
            self._reply(A.R_AUTH_LIMITED)
            return None
        self._sasl = exchange
        return self._step(exchange.start)

    def _step(self, advance: Callable[[], bytes | Credentials]) -> Deferred[None] | None:
        """Take the exchange one step: a challenge, an error, or the check of credentials."""
        try:
            out = advance()
        except Cancelled:
            self._sasl = None
            self._reply(A.R_AUTH_CANCELLED)
            return None
        except Malformed:
            self._sasl = None
            self._reply(A.R_AUTH_SYNTAX)
            return None
        if isinstance(out, bytes):
            self._reply(A.challenge(out))
            return None
        self._sasl = None
        return self._check(out)

    def _check(self, creds: Credentials) -> Deferred[None]:
        if creds.borrowed():
            # never checked: a right password must not let one user act as another
            d: Deferred[Any] = fail(UnauthorizedLogin(
                "authorization identity " + creds.authzid.decode("ascii", "replace")
                + " refused"))
        else:
            d = login(self.authority.portal, creds)
        return d.addCallbacks(self._loggedIn, self._loginFailed,
                              callbackArgs=(creds,), errbackArgs=(creds,))

    def _loggedIn(self, name: bytes, creds: Credentials) -> None:
        logAuth(self.log, self.env, creds.mechanism, creds.login, True)
        if self.state is State.CLOSED:
            return
        self.policy = self.policy.authenticated(name)
        self._reply(A.R_AUTH_OK)

    def _loginFailed(self, failure: Any, creds: Credentials) -> Deferred[None] | None:
        if not failure.check(UnauthorizedLogin):
            self.log.failure("submission: the password check failed", failure)
            logAuth(self.log, self.env, creds.mechanism, creds.login, False, "checker error")
            self._reply(A.R_AUTH_TEMP)
            return None
        logAuth(self.log, self.env, creds.mechanism, creds.login, False,
                str(failure.value) or "no such user or bad password")
        self.failures += 1
        self.authority.limiter.failed(self._key())
        return deferLater(self.clock, self.authority.delay, self._failedReply)

    def _failedReply(self) -> None:
        if self.state is State.CLOSED:
            return
        if self.failures >= MAX_FAILURES:
            self._reply(A.R_AUTH_TOOMANY)
            self._drop(256)
        else:
            self._reply(A.R_AUTH_FAILED)

    # -- MAIL ------------------------------------------------------------------------------

    def smtp_MAIL(self, arg: bytes) -> Deferred[None] | None:  # type: ignore[override]
        user = self.policy.user
        if user is None:
            self._reply(A.R_WANTAUTH)
            return None
        addr = parseAddress(arg, self._localIPs, self.control.localiphost)
        params = mailParameters(arg)
        if isinstance(screen(self.policy.sender(addr, params.size), addr, params.smtputf8), bytes):
            super().smtp_MAIL(arg)  # its own reply (555, 552, 553 5.6.7)
            return None
        control = self.control
        d = self.authority.runInThread(lambda: self.authority.senders.owns(control, user, addr))

        def checked(ok: bool) -> None:
            if self.state is State.CLOSED:
                return
            if ok:
                super(SubmissionServer, self).smtp_MAIL(arg)
            else:
                self._reply(A.R_NOTYOURS)

        def failed(f: Any) -> None:
            self.log.failure("submission: sender check failed", f)
            self._reply(A.R_SENDERTEMP)

        return d.addCallbacks(checked, failed)


class SubmissionFactory(SMTPFactory):
    """Builds L{SubmissionServer} sessions; C{servercert.pem} serves STARTTLS as for SMTP."""

    def __init__(self, ctx: Context, authority: Authority) -> None:
        super().__init__(ctx)
        self.authority = authority

    def buildProtocol(self, addr: Any) -> SubmissionServer:
        p = SubmissionServer(self.ctx.injector, self.ctx.controls.current(), self.ctx.reactor,
                             self.certificate, self.authority)
        p.factory = self
        return p


def makeSubmissionService(ctx: Context, name: str, endpoint: str, rulesPath: str | None,
                          concurrency: int, authority: Authority,
                          lookupHost: LookupHost | None = None, perIP: int = 10) -> IService:
    """
    A submission listening service.

    @param name: C{"submission"} or C{"submissions"} (the tcpserver log's namespace).
    @param endpoint: e.g. C{tcp:587} (STARTTLS), or C{ssl:465} (implicit TLS; without
        C{privateKey=} it serves C{control/servercert.pem}).
    @param rulesPath: C{--submission-rules} (default C{HOME/rules/submission}).
    @param authority: shared by all submission listeners of the daemon.
    """
    rulesPath = rulesPath or os.path.join(ctx.home.rules, "submission")
    service = makeListener(ctx, name, endpoint, rulesPath, concurrency,
                           SubmissionFactory(ctx, authority), lookupHost, perIP,
                           A.R_OVERLIMIT + b"\r\n")
    warnIfNoCertificate(ctx, name, endpoint)
    return service


def warnIfNoCertificate(ctx: Context, name: str, endpoint: str) -> None:
    """
    Log L{NOCERT_WARNING} when C{control/servercert.pem} is missing and the listener's TLS
    would come from it by STARTTLS (a C{tcp:}, C{unix:} or C{systemd:} endpoint): AUTH is only
    offered inside TLS, so such a listener can never take mail. At start and again on every
    SIGHUP (plugin.py adds it to C{ctx.reloaders}). The C{stat} runs on a thread.
    An implicit-TLS endpoint (C{ssl:}, C{tls:}) has its key or does not start
    (docs/behaviour/tcpserver.md 8.5): nothing to say for it.
    """
    if endpoint.split(":", 1)[0].lower() in ("ssl", "tls"):
        return
    path = os.path.join(ctx.home.control, "servercert.pem")
    line = NOCERT_WARNING.format(name=name, endpoint=endpoint)

    def checked(there: bool) -> None:
        if not there:
            log.warn("{line}", line=line)

    ctx.runInThread(lambda: os.path.exists(path)).addCallback(checked)
