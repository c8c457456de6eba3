"""
Local delivery throughput: 2,000 one-KB messages to 10 users, as root (per-uid helper children)
and, in the same run, not as root (in-process, as the daemon's uid), through the real LocalAgent
with at most C{concurrencylocal} (10) deliveries in flight, as the queue service dispatches them.

    python bench/local_bench.py [--count 2000] [--users 10] [--concurrency 10]

Prints a small table; the issue's goal is a root rate at least half of the other. As root the
10 users get 10 different existing unprivileged accounts (uid != 0, from the password file);
without root only the in-process variant runs.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import DeferredSemaphore, ensureDeferred, gatherResults  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402

from qmtwist.context import Context, ControlCache  # noqa: E402
from qmtwist.delivery import DeliveryRequest, Outcome  # noqa: E402
from qmtwist.home import Home, setup  # noqa: E402
from qmtwist.local.agent import LocalAgent  # noqa: E402
from qmtwist.queue.commit import Injector  # noqa: E402


def _accounts(n: int) -> list[tuple[int, int]]:
    if os.getuid() != 0:
        return [(os.getuid(), os.getgid())] * n
    seen: list[tuple[int, int]] = []
    for pw in pwd.getpwall():
        if pw.pw_uid != 0 and (pw.pw_uid, pw.pw_gid) not in seen:
            seen.append((pw.pw_uid, pw.pw_gid))
    return [seen[i % len(seen)] for i in range(n)]


def _prepare(base: str, users: int, root: bool) -> tuple[Home, str]:
    home = Home(os.path.join(base, "home"))
    setup(home, me="bench.example")
    lines = []
    for i, (uid, gid) in enumerate(_accounts(users)):
        h = os.path.join(base, f"user{i}")
        for d in ("", "Maildir", "Maildir/tmp", "Maildir/new", "Maildir/cur"):
            p = os.path.join(h, d)
            os.mkdir(p, 0o755 if not d else 0o700)
            if root:
                os.chown(p, uid, gid)
        lines.append(f"=user{i}:user{i}:{uid}:{gid}:{h}:::\n")
    with open(os.path.join(home.users, "assign"), "w") as f:
        f.writelines(lines)
    mess = os.path.join(base, "mess")
    with open(mess, "wb") as f:
        f.write(b"Received: (qmail 1 invoked from network); 1 Jan 2026 00:00:00 -0000\n")
        f.write(b"Subject: bench\n\n" + (b"x" * 63 + b"\n") * 15)
    return home, mess


async def _run(reactor, root: bool, count: int, users: int, concurrency: int) -> float:
    base = tempfile.mkdtemp(prefix="qmtwist-bench-")
    os.chmod(base, 0o755)
    try:
        home, mess = _prepare(base, users, root)

        def runInThread(f):
            return deferToThread(f)

        ctx = Context(home, reactor, Injector(home.queue, home.control, reactor, runInThread),
                      ControlCache(home), runInThread)
        agent = LocalAgent(ctx, root=root)
        sem = DeferredSemaphore(concurrency)
        # warm-up: start the helpers (root) and the thread pool; not timed
        await gatherResults([agent.deliver([DeliveryRequest(
            1, mess, b"s@x", b"user%d@bench.example" % i, 100000 + i, "1.1")])[0]
            for i in range(users)])
        failures = []

        async def one(i: int) -> None:
            req = DeliveryRequest(1, mess, b"s@x", b"user%d@bench.example" % (i % users), i,
                                  "1.1")
            r = await agent.deliver([req])[0]
            if r.outcome is not Outcome.SUCCESS:
                failures.append(r)

        start = time.perf_counter()
        await gatherResults([sem.run(lambda i=i: ensureDeferred(one(i))) for i in range(count)])
        elapsed = time.perf_counter() - start
        await agent.stop()
        if failures:
            raise SystemExit(f"{len(failures)} deliveries failed, e.g. {failures[0]}")
        return elapsed
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=10)
    args = p.parse_args()

    async def both(reactor):
        rows = []
        if os.getuid() == 0:
            t = await _run(reactor, True, args.count, args.users, args.concurrency)
            rows.append(("root (per-uid helpers)", t))
        t = await _run(reactor, False, args.count, args.users, args.concurrency)
        rows.append(("not root (in-process)", t))
        print(f"{'mode':<26}{'deliveries':>11}{'seconds':>10}{'per second':>12}")
        for name, t in rows:
            print(f"{name:<26}{args.count:>11}{t:>10.2f}{args.count / t:>12.0f}")
        if len(rows) == 2:
            ratio = rows[1][1] / rows[0][1]
            print(f"root rate / in-process rate = {ratio:.2f} (goal >= 0.50)")

    task.react(lambda reactor: ensureDeferred(both(reactor)))


if __name__ == "__main__":
    main()
