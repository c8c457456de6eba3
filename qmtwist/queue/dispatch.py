"""
The queue service's dispatch: the ready queues of each channel, the concurrency limits, and the
start of each delivery (docs/behaviour/queue.md 5.6, 6.2).

A pass over a channel (L{Dispatcher.beginPass}) puts every recipient not yet done into that
channel's ready queue; L{Dispatcher.pump} hands them to the channel's agent, never more at once
than C{concurrencylocal} or C{concurrencyremote}; never more than C{concurrencyrecipient} local
deliveries to one address, nor more than C{concurrencydestination} remote deliveries to one
recipient domain, so one slow domain cannot hold every remote slot. Reports from agents are
trusted only as far as qmail-send trusts its spawners: a crash, a missing report or a failed
Deferred becomes a deferral before the service sees it.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Callable, Mapping

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from qmtwist.context import ControlCache
from qmtwist.control import Control
from qmtwist.delivery import DeliveryRequest, Report
from qmtwist.interfaces import IDeliveryAgent
from qmtwist.queue import bounce as qbounce
from qmtwist.queue.envelope import ChannelEntry
from qmtwist.queue.layout import QueueLayout
from qmtwist.queue.state import Channel, Message, logSafe

log = Logger(namespace="qmail-send")
MAX_PASSED_OVER = 1000  # ready local entries looked past per pump, at most

#: Called with each delivery's report (already a deferral if the agent misbehaved), its
#: message, channel, recipient entry and delivery number.
ReportHandler = Callable[[object, Message, Channel, ChannelEntry, int], None]


def recipientLimit(control: Control) -> int:
    """Local deliveries at once to one address: concurrencyrecipient, else half the slots."""
    if control.concurrencyrecipient > 0:
        return int(control.concurrencyrecipient)
    return max(1, int(control.concurrencylocal) // 2)


def destinationLimit(control: Control) -> int:
    """Remote deliveries at once to one domain: concurrencydestination, else half the slots."""
    if control.concurrencydestination > 0:
        return int(control.concurrencydestination)
    return max(1, int(control.concurrencyremote) // 2)


def destination(address: bytes) -> bytes:
    """
    The destination a remote delivery counts against: the recipient's domain, without case
    (docs/behaviour/queue.md 5.6). The domain, not the route or the MX host, so the limit is known
    before any DNS lookup and a smarthost carrying many domains is shared fairly among them.
    """
    return address.rpartition(b"@")[2].lower()


class Dispatcher:
    """
    Starts deliveries within the concurrency limits (docs/behaviour/queue.md 5.6).

    @param layout: the queue, for each request's message path.
    @param controls: the limits are those of C{controls.snapshot} (read at the last HUP).
    @param agents: the delivery agent of each channel; looked up at every start, so a caller
        may replace one.
    @param messages: the service's messages by number; a ready entry whose message or channel
        is gone is dropped.
    @param onReport: receives each report.
    @param onStarted: called after each batch of deliveries started (the status line).
    @ivar active: deliveries in flight per channel.
    """

    def __init__(self, layout: QueueLayout, controls: ControlCache,
                 agents: dict[str, IDeliveryAgent], messages: Mapping[int, Message],
                 onReport: ReportHandler, onStarted: Callable[[], None]) -> None:
        self.layout = layout
        self.controls = controls
        self.agents = agents
        self.messages = messages
        self.onReport = onReport
        self.onStarted = onStarted
        self.ready: dict[str, deque[tuple[int, int]]] = {"local": deque(), "remote": deque()}
        self.active: dict[str, int] = {"local": 0, "remote": 0}
        # local deliveries in flight per recipient address (control/concurrencyrecipient)
        self.perRecipient: Counter[bytes] = Counter()
        # remote deliveries in flight per recipient domain (control/concurrencydestination)
        self.perDestination: Counter[bytes] = Counter()
        self.started = 0  # the number of the last delivery started

    def inFlight(self) -> int:
        """Deliveries started whose report has not been released yet."""
        return sum(self.active.values())

    def beginPass(self, m: Message, ch: Channel, now: float, lastPass: bool) -> None:
        """Start a pass over C{ch}: every recipient not done and not in flight becomes ready."""
        ch.inPass = True
        ch.passStart = now
        ch.lastPass = lastPass
        ch.deferred = False
        pending = [e for e in ch.undone() if e.position not in ch.inFlight]
        ch.outstanding = len(pending)
        for e in pending:
            self.ready[ch.name].append((m.id, e.position))
        if not pending:
            ch.inPass = False

    def withdraw(self, n: int) -> list[tuple[str, int]]:
        """
        Take message C{n}'s ready deliveries, not yet started, out of the ready queues (the
        message is held): the channel and recipient position of each.
        """
        out: list[tuple[str, int]] = []
        for name, ready in self.ready.items():
            mine = [pos for k, pos in ready if k == n]
            if mine:
                keep = [x for x in ready if x[0] != n]
                ready.clear()
                ready.extend(keep)
                out += [(name, pos) for pos in mine]
        return out

    def pump(self) -> None:
        """Start as many ready deliveries as the limits allow."""
        control = self.controls.snapshot
        limits = {"local": control.concurrencylocal, "remote": control.concurrencyremote}
        for name, ready in self.ready.items():
            agent = self.agents.get(name)
            if agent is None:
                continue
            if name == "local":
                self._pumpLocal(agent, ready, limits[name], recipientLimit(control))
            elif name == "remote":
                self._pumpRemote(agent, ready, limits[name], destinationLimit(control))

    def _pumpLocal(self, agent: IDeliveryAgent, ready: deque[tuple[int, int]], limit: int,
                   perRecipient: int) -> None:
        """
        Start local deliveries in queue order, but at most C{perRecipient} at once to one
        address: a user whose program never exits (or a flood to one address) holds at most
        that share of the C{concurrencylocal} slots, and the others keep being delivered.
        Entries passed over keep their place.
        """
        skipped: list[tuple[int, int]] = []
        while ready and self.active["local"] < limit and len(skipped) < MAX_PASSED_OVER:
            n, pos = ready.popleft()
            m = self.messages.get(n)
            if m is None or "local" not in m.channels:
                continue
            ch = m.channels["local"]
            address = ch.entries[pos].address.lower()
            if self.perRecipient[address] >= perRecipient:
                skipped.append((n, pos))
                continue
            self.perRecipient[address] += 1
            self._start(agent, m, ch, [pos])
        ready.extendleft(reversed(skipped))

    def _pumpRemote(self, agent: IDeliveryAgent, ready: deque[tuple[int, int]], limit: int,
                    perDestination: int) -> None:
        """
        Start remote deliveries in queue order, at most C{perDestination} at once to one
        recipient domain: a domain whose servers answer slowly (or a message with many
        recipients there) holds at most that share of the C{concurrencyremote} slots, and mail
        for other domains keeps its own. Consecutive recipients of one message go to the agent
        together, so it can give those that share a route one connection (remote.md 11). Entries
        passed over keep their place.
        """
        skipped: list[tuple[int, int]] = []
        batch: list[int] = []
        current: Message | None = None
        room = limit - self.active["remote"]
        while ready and len(batch) < room and len(skipped) < MAX_PASSED_OVER:
            n, pos = ready[0]
            if current is not None and n != current.id:
                self._start(agent, current, current.channels["remote"], batch)
                room, batch, current = limit - self.active["remote"], [], None
                continue
            ready.popleft()
            m = self.messages.get(n)
            if m is None or "remote" not in m.channels:
                continue
            where = destination(m.channels["remote"].entries[pos].address)
            if self.perDestination[where] >= perDestination:
                skipped.append((n, pos))
                continue
            self.perDestination[where] += 1
            batch.append(pos)
            current = m
        if current is not None:
            self._start(agent, current, current.channels["remote"], batch)
        ready.extendleft(reversed(skipped))

    def _start(self, agent: IDeliveryAgent, m: Message, ch: Channel, positions: list[int]) -> None:
        requests, numbers, entries = [], [], []
        for pos in positions:
            e = ch.entries[pos]
            self.started += 1
            numbers.append(self.started)
            entries.append(e)
            ch.inFlight.add(pos)
            self.active[ch.name] += 1
            log.info(
                "starting delivery {delivery}: msg {id} to {channel} {addr}",
                delivery=self.started, id=m.id, channel=ch.name, addr=logSafe(e.address))
            requests.append(DeliveryRequest(
                m.id, self.layout.mess(m.id), qbounce.verpSender(m.sender, e.address),
                e.address, pos, m.stamp, ch.recovered or pos in ch.attempted, ch.lastPass))
            ch.attempted.add(pos)
        self.onStarted()
        results: list[Deferred[object]]
        try:
            results = list(agent.deliver(requests))
        except Exception as exc:
            log.failure("delivery agent crashed")
            results = [succeed(Report.deferral(f"Unable to run delivery: {exc}. (#4.3.0)"))
                       for _ in requests]
        if len(results) != len(requests):
            log.warn("delivery agent answered {got} of {n} requests", got=len(results),
                     n=len(requests))
            results = (results + [succeed(Report.deferral(
                b"Delivery agent gave no report. (#4.3.0)")) for _ in requests])[:len(requests)]
        for d, number, e in zip(results, numbers, entries):
            d.addErrback(lambda f: Report.deferral(
                f"Delivery agent crashed: {f.getErrorMessage()}. (#4.3.0)"))
            d.addCallback(self.onReport, m, ch, e, number)

    def release(self, channel: str, address: bytes) -> None:
        """A delivery to C{address} on C{channel} has reported: free its slots."""
        if channel == "local":
            key = address.lower()
            self.perRecipient[key] -= 1
            if self.perRecipient[key] <= 0:
                del self.perRecipient[key]
        elif channel == "remote":
            key = destination(address)
            self.perDestination[key] -= 1
            if self.perDestination[key] <= 0:
                del self.perDestination[key]
        self.active[channel] -= 1
