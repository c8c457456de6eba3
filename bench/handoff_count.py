"""
Syncs and thread hops per message from in-process injection to "scheduled for delivery".

    python bench/handoff_count.py [-n 100] [--per-hop 10] [--no-syncfs]

Builds the daemon's injector and queue service over a queue in a temporary directory (real
files, real fsync/syncfs), with delivery agents that hold every delivery (so only injection,
commit and preprocessing are counted), and a thread runner that records every hop and runs the
hops one at a time in order. Two load shapes:

- burst: N commits are asked for at once, then the hops run until nothing is left;
- steady: PER_HOP new commits arrive while each hop of the injector runs (the shape of many
  SMTP sessions; the service's hops run beside the rounds in the daemon, so they take none);
- single: one commit at a time, the next once every hop of the previous one has run.

Prints, for each: messages held by the service (preprocessed and scheduled), syncs per message
(Syncer counts of the injector and the queue service: file fsyncs, directory fsyncs, syncfs),
thread hops per message (by who asked).
Counts only: no time is measured, so the figures are the same on any machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.defer import Deferred, succeed  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from zope.interface import implementer  # noqa: E402

from qmtwist.context import ControlCache  # noqa: E402
from qmtwist.home import Home, setup  # noqa: E402
from qmtwist.interfaces import IDeliveryAgent  # noqa: E402
from qmtwist.queue.commit import Injector  # noqa: E402
from qmtwist.queue.service import QueueService  # noqa: E402
from qmtwist.queue.store import Syncer  # noqa: E402


@implementer(IDeliveryAgent)
class HoldingAgent:
    """Takes every delivery and never answers: the count stops at "scheduled"."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.requests = 0

    def deliver(self, requests: list[Any]) -> list[Deferred[Any]]:
        self.requests += len(requests)
        return [Deferred() for _ in requests]

    def reload(self) -> None:
        pass

    def stop(self) -> Deferred[None]:
        return succeed(None)


class HopRecorder:
    """A runInThread that queues calls and runs them, one hop at a time, when pumped."""

    def __init__(self, name: str, hops: Counter[str], queue: list[Any]) -> None:
        self.name = name
        self.hops = hops
        self.queue = queue

    def __call__(self, f: Callable[[], Any]) -> Deferred[Any]:
        self.hops[self.name] += 1
        d: Deferred[Any] = Deferred()
        self.queue.append((self.name, f, d))
        return d


def pumpOne(queue: list[Any]) -> str | None:
    """Run the oldest hop; return who asked for it (L{None}: nothing to run)."""
    if not queue:
        return None
    name, f, d = queue.pop(0)
    try:
        result = f()
    except Exception as e:  # a hop's failure goes to its Deferred, as a thread's would
        d.errback(e)
    else:
        d.callback(result)
    return name


def run(n: int, perHop: int, useSyncfs: bool, shape: str) -> dict[str, Any]:
    base = tempfile.mkdtemp(prefix="handoff-count-")
    try:
        home = Home(os.path.join(base, "home"))
        setup(home, me="test.example")
        clock = Clock()
        clock.advance(time.time())
        hops: Counter[str] = Counter()
        queue: list[Any] = []
        injSyncer, svcSyncer = Syncer(useSyncfs=useSyncfs), Syncer(useSyncfs=useSyncfs)
        injector = Injector(home.queue, home.control, clock, HopRecorder("injector", hops, queue),
                            syncer=injSyncer)
        local = HoldingAgent("local")
        svc = QueueService(home.queue, ControlCache(home), clock,
                           HopRecorder("service", hops, queue),
                           {"local": local, "remote": HoldingAgent("remote")}, injector,
                           syncer=svcSyncer)
        injector.addObserver(svc.preprocess)  # as qmtwist/plugin.py hooks them up
        svc.startService()
        while pumpOne(queue) is not None:  # recovery of the empty queue
            pass
        hops.clear()
        s0 = injSyncer.total + svcSyncer.total
        answered: list[Any] = []
        body = b"Subject: count\n\n" + b"x" * 1000 + b"\n"

        def one() -> None:
            d = injector.inject(b"joe@test.example", [b"fred@test.example"], body, b"by uid 0")
            d.addBoth(answered.append)

        sent = 0
        if shape == "burst":
            for _ in range(n):
                one()
            sent = n
        arrive = shape == "steady" or shape == "single"
        while True:
            if arrive and (shape == "steady" or not queue):
                for _ in range(min(perHop if shape == "steady" else 1, n - sent)):
                    one()
                    sent += 1
            who = pumpOne(queue)
            if who is None and sent >= n:
                break
            # steady: commits arrive while the injector's rounds run; the service's own hops
            # run beside them on other threads in the daemon and take no time of their own
            arrive = who == "injector" or who is None
        syncs = injSyncer.total + svcSyncer.total - s0
        svc.intake.closed = True
        return {
            "answered": len(answered), "scheduled": len(svc.messages),
            "syncs_per_msg": syncs / n, "hops_per_msg": sum(hops.values()) / n,
            "hops": dict(hops),
            "syncs": {"injector": (injSyncer.fileSyncs, injSyncer.dirSyncs, injSyncer.fsSyncs),
                      "service": (svcSyncer.fileSyncs, svcSyncer.dirSyncs, svcSyncer.fsSyncs)},
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=100, help="messages (default 100)")
    p.add_argument("--per-hop", type=int, default=10,
                   help="steady shape: commits arriving during each round (default 10)")
    p.add_argument("--no-syncfs", action="store_true",
                   help="fsync each file and directory instead of one syncfs per round")
    args = p.parse_args()
    for shape in ("burst", "steady", "single"):
        r = run(args.n, args.per_hop, not args.no_syncfs, shape)
        print(f"{shape:6} n={args.n} answered={r['answered']} scheduled={r['scheduled']} "
              f"syncs/msg={r['syncs_per_msg']:.3f} hops/msg={r['hops_per_msg']:.3f} "
              f"hops={r['hops']} syncs(file,dir,fs)={r['syncs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
