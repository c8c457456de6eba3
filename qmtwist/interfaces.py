"""
The joints between qmtwist's parts.

Data flows one way: listeners and tools -> L{IInjector} -> queue service -> L{IDeliveryAgent} ->
reports -> done marks or bounces. Only L{qmtwist.plugin} builds concrete providers and wires them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from typing import Callable

    from twisted.internet.defer import Deferred

    from qmtwist.queue.store import PendingMessage, Queued


class IMessageWriter(Interface):
    """
    One message being received, streamed into the queue (qmail-queue's fd 0 side).

    Created by L{IInjector.newMessage}; the queue's Received line is already written. Exactly one of
    L{commit} or L{abort} must be called.
    """

    qp = Attribute("int: the queue process number shown in Received, logs and replies")
    size = Attribute("int: message bytes written so far (without the queue's Received line)")

    def write(data: bytes) -> None:
        """
        Append message bytes (LF line ends, no dot-stuffing).

        @raise qmtwist.errors.QueueError: a write error; the caller should abort.
        """

    def commit(
        sender: bytes, recipients: list[bytes], onceKey: str | None = None,
    ) -> "Deferred[Queued]":  # noqa: F821
        """
        Write the envelope and make the message durable; fires only after the fsync round.

        @param onceKey: given by local delivery for a forward (its delivery's C{uniqueKey}): the
            commit also records the forward under that key (C{queue/fwd/}), so that a repeated
            delivery does not queue it again (docs/behaviour/queue.md 5.10). Only local
            delivery passes it, to the daemon's own injector.
        @return: a Deferred firing with L{qmtwist.queue.store.Queued}, or failing with
            L{qmtwist.errors.QueueError} after removing every file of this message.
        """

    def abort() -> None:
        """Discard the message; nothing of it stays in the queue."""


class IInjector(Interface):
    """
    Queue messages in qmail's layout (qmail-queue inside the daemon).

    Listeners and local delivery use L{newMessage} and L{inject}; the queue service's bounces,
    written on a thread, use L{allocateQp} and L{commitPending}; whoever must know of new
    messages (the queue service) registers with L{addObserver}.
    """

    def newMessage(how: bytes, uid: int | None = None) -> IMessageWriter:  # type: ignore[misc]
        """
        Start a message.

        @param how: what follows C{invoked} in the Received line: C{b"from network"},
            C{b"for bounce"}, C{b"by alias"} or C{b"by uid 1000"}.
        @param uid: the injector's uid for the envelope's C{u} record (default: ours).
        @raise qmtwist.errors.QueueError: the queue cannot take a message now.
        """

    def openMessage(how: bytes, uid: int | None = None) -> "Deferred[IMessageWriter]":  # noqa: F821
        """
        L{newMessage}, with the queue file created off the reactor thread: fires with the
        writer, or fails with the L{qmtwist.errors.QueueError} L{newMessage} would raise.
        """

    def inject(
        sender: bytes, recipients: list[bytes], message: bytes, how: bytes, uid: int | None = None
    ) -> "Deferred[Queued]":  # noqa: F821
        """Queue a whole message held in memory; same result as L{IMessageWriter.commit}."""

    def allocateQp() -> int:  # type: ignore[misc]
        """A qp for a message that is written off the reactor thread, then L{commitPending}."""

    def commitPending(pending: "PendingMessage") -> "Deferred[Queued]":  # noqa: F821
        """
        Commit a message whose bytes and envelope were written off the reactor thread (a
        bounce, docs/behaviour/queue.md 5.7), in the next commit round.

        @return: as L{IMessageWriter.commit}.
        """

    def addObserver(observer: "Callable[[list[int]], None]") -> None:  # noqa: F821
        """
        Call C{observer} on the reactor thread with the message numbers of every commit round
        that committed any, after they are durable and before their committers are answered
        (the queue service preprocesses them, docs/behaviour/queue.md 5.5).
        """


class IDeliveryAgent(Interface):
    """
    Delivers one channel's recipients (qmail-lspawn / qmail-rspawn).

    Agents never fail their Deferreds: every problem becomes a L{qmtwist.delivery.Report}, and
    anything unexpected a deferral with C{(#4.3.0)}.
    """

    channel = Attribute("str: 'local' or 'remote'")

    def deliver(requests: list) -> list:  # type: ignore[misc]
        """
        Start deliveries for recipients of one message.

        @param requests: L{qmtwist.delivery.DeliveryRequest}s, all of the same message.
        @return: one C{Deferred[Report]} per request, in the same order.
        """

    def reload() -> None:
        """Drop cached configuration (SIGHUP)."""

    def stop() -> "Deferred[None]":  # noqa: F821
        """Stop helper processes; deliveries in flight end as deferrals."""


class IUserDatabase(Interface):
    """Finds the user who controls a local part (qmail-getpw, users/assign)."""

    def lookup(local: bytes) -> "Deferred[object]":  # noqa: F821
        """
        @return: a Deferred firing with the controlling user, or failing with
            L{qmtwist.errors.MailError} (e.g. C{Unable to find alias user!}).
        """


class IPasswordChecker(Interface):
    """Checks a POP3 login (built-in users/passwd or a checkpassword program)."""

    def check(user: bytes, password: bytes) -> "Deferred[object]":  # noqa: F821
        """@return: a Deferred firing with the user's mailbox, or failing when refused."""


class ISessionObserver(Interface):
    """
    Told of the sessions of the listeners (C{inbound}) and of remote delivery's connections
    (C{outbound}), on the reactor thread: the metrics (L{qmtwist.metrics}) count them. A
    listener's L{qmtwist.tcpsession.SessionFactory} and remote delivery's
    L{qmtwist.remote.connection.Dialer} keep a list C{observers} that the plugin fills.
    """

    def sessionStarted(direction: str, protocol: str) -> None:
        """
        A session began: an inbound one the rules allowed (the C{ok N} line), or an outbound
        connection that was made.

        @param direction: C{"inbound"} or C{"outbound"}.
        @param protocol: C{"smtp"}, C{"qmtp"} or C{"pop3"}.
        """

    def sessionEnded(direction: str, protocol: str, tls: bool) -> None:
        """That session ended; C{tls}: it was encrypted (STARTTLS, STLS or an C{ssl:} port)."""


class IDeliveryObserver(Interface):
    """
    Told of the result of every delivery, on the reactor thread, after the queue service logged
    it (C{QueueService.deliveryObservers}): the metrics count them.
    """

    def delivered(channel: str, outcome: object, text: bytes, birth: float) -> None:
        """
        @param outcome: the L{qmtwist.delivery.Outcome} as recorded (a deferral in the last
            pass is already a failure).
        @param text: the report text.
        @param birth: the message's time of arrival in the queue (its info file's mtime).
        """
