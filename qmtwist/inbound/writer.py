"""
The hook into the SMTP session (docs/behaviour/authentication.md 22.2): a session injector whose
messages, for a session that L{qmtwist.policy.SessionPolicy.verifyInbound}, are verified at the
end of DATA (or of the C{BDAT ... LAST} chunk), before their commit.

The session streams DATA into the queue's writer as always (no message is held in memory).
When it commits, L{InboundVerifier} runs one job on a thread: read the written file back, run
the checks (L{qmtwist.inbound.checks}), then write the final message as a new queue file
(L{qmtwist.queue.store.writeMessage}: the queue's Received line, our Authentication-Results
field, the rest copied in chunks without the fields that claim our name) and discard the first
file. The new file is committed by the daemon's injector like any other, so the C{250} still
comes only after the durable commit; its qp and time are the first file's.

At most L{CONCURRENCY} of these jobs run at once (the rest wait their turn): that bounds the
worker threads they take and the memory dkimpy holds (each job at most
L{qmtwist.inbound.message.DKIM_LIMIT} of message). A DMARC C{p=reject} failure under
C{control/dmarcreject} 1 discards the message and refuses it with L{DMARCRejected}.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any, Callable

from attrs import frozen
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.logger import Logger
from zope.interface import implementer

from qmtwist.errors import QQ_READ_ERROR, PermanentFailure, QueueError
from qmtwist.inbound import checks, message
from qmtwist.inbound.dns import ThreadDNS
from qmtwist.inbound.results import Verification, header
from qmtwist.interfaces import IMessageWriter
from qmtwist.queue.store import PendingMessage, Queued, writeMessage
from qmtwist.smtp.listener import SMTPFactory
from qmtwist.smtp.server import SMTPServer

#: verification jobs at once (docs/behaviour/authentication.md 22.2)
CONCURRENCY = 4

log = Logger(namespace="qmtwist.inbound")


class DMARCRejected(PermanentFailure):
    """The message failed DMARC and its domain's policy is reject (control/dmarcreject)."""

    def __init__(self, domain: str) -> None:
        super().__init__(f"sorry, the DMARC policy of {domain} rejects this message (#5.7.1)")
        #: the whole SMTP reply (L{qmtwist.smtp.replies.queueErrorReply})
        self.reply = b"550 5.7.1 " + self.text.encode("ascii", "replace")


@frozen
class _Done:
    pending: PendingMessage
    verification: Verification
    removed: int


@frozen
class _Refused:
    verification: Verification


class InboundVerifier:
    """
    The daemon's verifier: what every verified message shares.

    @param ctx: the daemon's L{qmtwist.context.Context} (reactor, injector, thread runner).
    @param resolver: returns the daemon's C{--dns} resolver (called on the reactor thread).
    """

    def __init__(self, ctx: Any, resolver: Callable[[], Any]) -> None:
        self.ctx = ctx
        self.resolver = resolver
        self.semaphore = DeferredSemaphore(CONCURRENCY)
        self.stopping = False
        self._watching = False

    def factory(self, ctx: Any) -> SMTPFactory:
        """The SMTP listener's protocol factory with this verifier hooked in."""
        return InboundSMTPFactory(ctx, self)

    def _stop(self) -> None:
        self.stopping = True

    def commit(self, w: VerifyingWriter, sender: bytes, recipients: list[bytes]
               ) -> Deferred[Queued]:
        """Verify, write the final message, commit it (see the module docstring)."""
        if not self._watching:
            self._watching = True
            # lookups still asked for once the daemon stops fail at once (no hung worker)
            self.ctx.reactor.addSystemEventTrigger("before", "shutdown", self._stop)
        resolver = ThreadDNS(self.ctx.reactor, self.resolver(),
                             stopping=lambda: self.stopping)
        job = partial(self._job, w, resolver, sender, list(recipients))
        d: Deferred[Any] = self.semaphore.run(self.ctx.runInThread, job)
        d.addCallback(self._finish, w)
        return d

    def _job(self, w: VerifyingWriter, resolver: ThreadDNS, sender: bytes,
             recipients: list[bytes]) -> _Done | _Refused:
        """On a worker thread: read back, check, write the final copy; the first file goes."""
        try:
            try:
                q = message.open(w.path)
            except OSError as e:
                raise QueueError(QQ_READ_ERROR, str(e))
            try:
                try:
                    v = checks.verify(resolver, q, w.ip, sender, w.helo)
                except Exception:
                    checks.logFailure(self.ctx.reactor, "inbound verification failed")
                    v = checks.unverified("internal error", sender)
                if v.dmarc.rejects and w.control.dmarcreject == 1:
                    return _Refused(v)
                removed = message.Removed()
                chunks = message.finalChunks(q, header(w.control.me, v), w.control.me, removed)
                try:
                    p = writeMessage(w.layout, chunks, lambda: (sender, recipients),
                                     w.how, w.uid, w.qp, w.time)
                except OSError as e:
                    raise QueueError(QQ_READ_ERROR, str(e))
                return _Done(p, v, removed.count)
            finally:
                q.close()
        finally:
            w.inner.abort()

    def _finish(self, outcome: _Done | _Refused, w: VerifyingWriter) -> Deferred[Queued]:
        """Back on the reactor thread: log, then commit or refuse."""
        v = outcome.verification
        results = " ".join([f"spf={c.result}" for c in v.spf[:1]]
                           + [f"dkim={c.result}" for c in v.dkim] + [f"dmarc={v.dmarc.result}"])
        ip = w.ip.decode("ascii", "replace")
        if isinstance(outcome, _Refused):
            domain = v.dmarc.fromDomain or "?"
            log.info("inbound: qp {qp} from {ip} refused: DMARC policy reject for {domain} "
                     "({results})", qp=w.qp, ip=ip, domain=domain, results=results)
            raise DMARCRejected(domain)
        log.info("inbound: qp {qp} from {ip}: {results}{removed}", qp=w.qp, ip=ip,
                 results=results, removed=f" (removed {outcome.removed} Authentication-Results "
                 "claiming our name)" if outcome.removed else "")
        return self.ctx.injector.commitPending(outcome.pending)  # type: ignore[no-any-return]


@implementer(IMessageWriter)
class VerifyingWriter:
    """
    A message of a verified session: bytes go to the queue's writer C{inner} as they come;
    L{commit} verifies first (L{InboundVerifier.commit}).
    """

    def __init__(self, inner: Any, verifier: InboundVerifier, session: SMTPServer, how: bytes,
                 uid: int | None) -> None:
        self.inner = inner
        self.verifier = verifier
        injector = verifier.ctx.injector
        self.layout = injector.layout
        self.path = self.layout.mess(inner.id)
        self.how = how
        self.uid = os.getuid() if uid is None else uid
        self.time = injector.clock.seconds()
        # what the checks need, as it is at DATA (nothing changes it before the final dot)
        self.ip: bytes = session.env.get("TCPREMOTEIP", b"")
        self.helo: bytes | None = session.helo
        self.control = session.control
        self._done = False

    @property
    def qp(self) -> int:
        return self.inner.qp  # type: ignore[no-any-return]

    @property
    def size(self) -> int:
        return self.inner.size  # type: ignore[no-any-return]

    def write(self, data: bytes) -> None:
        self.inner.write(data)

    def commit(self, sender: bytes, recipients: list[bytes],
               onceKey: str | None = None) -> Deferred[Queued]:
        if self._done:
            raise RuntimeError("message already finished")
        self._done = True
        return self.verifier.commit(self, sender, recipients)

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self.inner.abort()


class SessionInjector:
    """The injector as one SMTP session sees it: L{newMessage} verifies when the session's
    policy says so; everything else is the daemon's injector."""

    def __init__(self, inner: Any, verifier: InboundVerifier, session: SMTPServer) -> None:
        self.inner = inner
        self.verifier = verifier
        self.session = session

    def newMessage(self, how: bytes, uid: int | None = None) -> Any:
        w = self.inner.newMessage(how, uid)
        if not self.session.policy.verifyInbound:
            return w
        return VerifyingWriter(w, self.verifier, self.session, how, uid)

    def openMessage(self, how: bytes, uid: int | None = None) -> Deferred[Any]:
        """L{newMessage} with the queue file created on a thread (the daemon's injector)."""
        d: Deferred[Any] = self.inner.openMessage(how, uid)
        if not self.session.policy.verifyInbound:
            return d
        return d.addCallback(
            lambda w: VerifyingWriter(w, self.verifier, self.session, how, uid))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class InboundSMTPFactory(SMTPFactory):
    """L{SMTPFactory} whose sessions get a L{SessionInjector}."""

    def __init__(self, ctx: Any, verifier: InboundVerifier) -> None:
        super().__init__(ctx)
        self.verifier = verifier

    def buildProtocol(self, addr: Any) -> SMTPServer:
        p = super().buildProtocol(addr)
        p.injector = SessionInjector(p.injector, self.verifier, p)
        return p
