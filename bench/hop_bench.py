"""
CPU per thread hop: Twisted's reactor thread pool (deferToThreadPool) against
L{qmtwist.threadrunner.ThreadRunner}, in the same invocation, with ten chains of calls in flight
(the daemon's shape: many sessions, each waiting for one file operation at a time).

    python bench/hop_bench.py [--calls 20000] [--threads 10]

Prints CPU microseconds per call (process time, all threads) and the ratio. A call does nothing,
so the figure is the hand-off alone. Each runner runs in its own child process (a reactor runs
once per process).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(kind: str, calls: int, threads: int) -> None:
    from twisted.internet import defer, reactor
    from twisted.internet.threads import deferToThreadPool

    from qmtwist.threadrunner import ThreadRunner

    r: object = reactor
    if kind == "twisted":
        reactor.suggestThreadPoolSize(threads)  # type: ignore[attr-defined]
        pool = reactor.getThreadPool()  # type: ignore[attr-defined]

        def run(f):  # type: ignore[no-untyped-def]
            return deferToThreadPool(r, pool, f)
    else:
        run = ThreadRunner(r, threads)

    def chain(n: int) -> defer.Deferred[object]:
        d: defer.Deferred[object] = defer.succeed(None)
        for _ in range(n):
            d.addCallback(lambda _: run(lambda: 1))
        return d

    def main() -> None:
        t0 = time.process_time()
        d = defer.gatherResults([chain(calls // 10) for _ in range(10)])

        def report(_: object) -> None:
            print(1e6 * (time.process_time() - t0) / calls)
            reactor.stop()  # type: ignore[attr-defined]
        d.addCallback(report)

    reactor.callWhenRunning(main)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=10)
    ap.add_argument("--child", choices=("twisted", "runner"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.calls, args.threads)
        return 0
    env = dict(os.environ, PYTHONPATH=REPO)
    figures = {}
    for kind in ("twisted", "runner"):
        out = subprocess.run([sys.executable, __file__, "--child", kind, "--calls", str(args.calls),
                              "--threads", str(args.threads)], env=env, check=True,
                             capture_output=True, text=True).stdout
        figures[kind] = float(out.strip())
        print(f"{kind:8s} {figures[kind]:7.1f} us CPU per call ({args.threads} threads)")
    print(f"ratio runner/twisted: {figures['runner'] / figures['twisted']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
