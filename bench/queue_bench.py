"""
Queue throughput against the disk's own limit, measured in one run.

    python bench/queue_bench.py [-n 2000] [--injectors 8] [--dir DIR]

Injects N one-KB messages through the injection API (qmtwist.queue.commit.Injector) from
concurrent injectors into a daemon built as twistd builds it (queue service + local delivery to
a Maildir), all in this process, and reports:

- messages per second from the first injection until every message is in the Maildir;
- sync calls per message, counted by wrapping os.fsync and the queue's Syncer (file fsyncs,
  directory fsyncs, syncfs calls), and how many ran on the reactor thread (must be 0);
- CPU seconds per message of the daemon (this process, all threads);
- the disk's limit: write+fsync+rename+directory-fsync cycles per second on the same filesystem,
  and the ratio of our rate to it.

Run as root, the bench first drops to an unprivileged account so every delivery runs in this
process and every fsync is counted (bench/local_bench.py measures the root helper children).
A warm-up of 10% of N runs before the measured window. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import sys
import tempfile
import threading
import time
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class FsyncCounter:
    """Counts os.fsync calls, and those made on the reactor (main) thread."""

    def __init__(self) -> None:
        self.calls = 0
        self.onMainThread = 0
        self._lock = threading.Lock()
        self._real = os.fsync

    def __call__(self, fd: int) -> None:
        with self._lock:
            self.calls += 1
            if threading.current_thread() is threading.main_thread():
                self.onMainThread += 1
        self._real(fd)


def probeDisk(directory: str, cycles: int) -> float:
    """write(1 KB) + fsync + rename + fsync(dir) cycles per second in C{directory}."""
    d = tempfile.mkdtemp(dir=directory, prefix="probe-")
    data = b"x" * 1024
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    start = time.perf_counter()
    for i in range(cycles):
        tmp = os.path.join(d, f"t{i}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, os.path.join(d, f"f{i}"))
        os.fsync(dfd)
    elapsed = time.perf_counter() - start
    os.close(dfd)
    shutil.rmtree(d)
    return cycles / elapsed


def preload() -> None:
    """Import everything first: as root the interpreter may live where others cannot read."""
    import importlib

    for name in ("twisted.internet.reactor", "twisted.internet.threads", "twisted.logger",
                 "qmtwist.plugin", "qmtwist.users", "qmtwist.local.agent",
                 "qmtwist.remote.agent", "qmtwist.remote.mx", "qmtwist.queue.socketserver",
                 "resource", "json", "base64", "hashlib", "grp", "pwd", "shlex", "errno"):
        importlib.import_module(name)


def dropPrivileges() -> None:
    if os.getuid() != 0:
        return
    from qmtwist.home import virtualAccount

    uid, gid = virtualAccount()
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    os.environ["HOME"] = "/"
    os.environ["USER"] = pwd.getpwuid(uid).pw_name


def run(n: int, injectors: int, directory: str, useSyncfs: bool = True) -> dict[str, float]:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, ensureDeferred
    from twisted.internet.threads import deferToThreadPool
    from twisted.logger import globalLogPublisher

    from qmtwist.home import Home, setup
    from qmtwist.plugin import Options, buildServices
    from qmtwist.users import userCommand

    base = tempfile.mkdtemp(dir=directory, prefix="qmtwist-bench-")
    os.chmod(base, 0o755)
    home = Home(os.path.join(base, "home"))
    setup(home, me="bench.example")
    assert userCommand(home, ["add", "bench"]) == 0
    options = Options()
    options.parseOptions(["--home", home.path, "--smtp", "none", "--qmtp", "none",
                          "--pop3", "none"])
    built = buildServices(options, reactor)
    counter = FsyncCounter()
    os.fsync = counter
    ended: list[int] = []
    waiters: list[tuple[int, Deferred]] = []

    def observe(event: dict) -> None:
        if event.get("log_format") == "end msg {id}":
            ended.append(event["id"])
            while waiters and len(ended) >= waiters[0][0]:
                waiters.pop(0)[1].callback(None)

    globalLogPublisher.addObserver(observe)
    if os.environ.get("BENCH_LOG"):
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    injector = built.context.injector
    syncer = injector.syncer
    queueSyncer = built.queue.syncer
    syncer.useSyncfs = queueSyncer.useSyncfs = useSyncfs
    body = b"Subject: bench\n\n" + (b"x" * 63 + b"\n") * 15
    body = body[:1024]
    recipient = b"bench@bench.example"
    results: dict[str, float] = {}

    def until(count: int) -> Deferred:
        d: Deferred = Deferred()
        if len(ended) >= count:
            d.callback(None)
        else:
            waiters.append((count, d))
            waiters.sort(key=lambda w: w[0])
        return d

    async def batch(count: int) -> None:
        remaining = [count]

        async def worker() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                await injector.inject(b"bench@bench.example", [recipient], body, b"by uid 0")

        from twisted.internet.defer import gatherResults

        await gatherResults([ensureDeferred(worker()) for _ in range(injectors)])

    async def main() -> None:
        await built.queue.started
        warm = max(1, n // 10)
        await batch(warm)
        await until(warm)
        f0, q0, r0 = counter.calls, syncer.fsSyncs + syncer.dirSyncs, injector.rounds
        s0 = syncer.fsSyncs + queueSyncer.fsSyncs
        qf0 = queueSyncer.fsSyncs + queueSyncer.dirSyncs
        main0 = counter.onMainThread
        cpu0 = sum(os.times()[:2])
        user0, sys0 = os.times()[:2]
        t0 = time.perf_counter()
        await batch(n)
        t1 = time.perf_counter()
        await until(warm + n)
        t2 = time.perf_counter()
        cpu = sum(os.times()[:2]) - cpu0
        user1, sys1 = os.times()[:2]
        results.update({
            "messages": n,
            "injected_per_s": n / (t1 - t0),
            "delivered_per_s": n / (t2 - t0),
            "fsync_per_msg": (counter.calls - f0) / n,
            "syncfs_per_msg": (syncer.fsSyncs + queueSyncer.fsSyncs - s0) / n,
            "dir_or_fs_syncs_inject_per_msg": (syncer.fsSyncs + syncer.dirSyncs - q0) / n,
            "dir_or_fs_syncs_queue_per_msg": (queueSyncer.fsSyncs + queueSyncer.dirSyncs - qf0) / n,
            "commit_rounds": injector.rounds - r0,
            "reactor_thread_fsyncs": counter.onMainThread - main0,
            "cpu_ms_per_msg": 1000 * cpu / n,
            "user_ms_per_msg": 1000 * (user1 - user0) / n,
            "sys_ms_per_msg": 1000 * (sys1 - sys0) / n,
        })
        maildir = os.path.join(home.homes, "bench", "Maildir", "new")
        results["maildir_files"] = len(os.listdir(maildir))
        await built.top.stopService()

    reactor.callWhenRunning(built.top.startService)

    def go() -> None:
        d = ensureDeferred(main())
        d.addErrback(lambda f: (f.printTraceback(), results.update(error=1)))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    pool = reactor.getThreadPool()
    _ = partial(deferToThreadPool, reactor, pool)
    reactor.run()
    os.fsync = counter._real
    shutil.rmtree(base, ignore_errors=True)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=2000, help="messages (default 2000)")
    p.add_argument("--injectors", type=int, default=8, help="concurrent injectors (default 8)")
    p.add_argument("--no-syncfs", action="store_true",
                   help="fsync each file and directory instead of one syncfs per round")
    p.add_argument("--dir", default=None, help="where to put the home (default: bench/out)")
    opts = p.parse_args()
    directory = opts.dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o777)
    preload()
    dropPrivileges()
    probe = probeDisk(directory, max(500, opts.n // 2))
    r = run(opts.n, opts.injectors, directory, not opts.no_syncfs)
    if "error" in r:
        return 1
    rounds = r["commit_rounds"] or 1
    rows = [
        ("messages injected", f"{r['messages']:.0f} x 1 KB, {opts.injectors} injectors"),
        ("delivered to Maildir (msg/s)", f"{r['delivered_per_s']:.0f}"),
        ("accepted by the queue (msg/s)", f"{r['injected_per_s']:.0f}"),
        ("disk probe (write+fsync+rename+dirsync/s)", f"{probe:.0f}"),
        ("ratio delivered / probe", f"{r['delivered_per_s'] / probe:.2f}"),
        ("ratio accepted / probe", f"{r['injected_per_s'] / probe:.2f}"),
        ("fsync calls per message (files and dirs)", f"{r['fsync_per_msg']:.2f}"),
        ("syncfs calls per message", f"{r['syncfs_per_msg']:.3f}"),
        ("dir/fs syncs per message, injection", f"{r['dir_or_fs_syncs_inject_per_msg']:.3f}"),
        ("dir/fs syncs per message, preprocessing",
         f"{r['dir_or_fs_syncs_queue_per_msg']:.3f}"),
        ("messages per commit round", f"{r['messages'] / rounds:.1f}"),
        ("fsyncs on the reactor thread", f"{r['reactor_thread_fsyncs']:.0f}"),
        ("daemon CPU per message (ms)", f"{r['cpu_ms_per_msg']:.2f}"),
        ("  of which user / system (ms)",
         f"{r['user_ms_per_msg']:.2f} / {r['sys_ms_per_msg']:.2f}"),
        ("files in Maildir/new", f"{r['maildir_files']:.0f}"),
    ]
    width = max(len(a) for a, _ in rows)
    print(f"{'metric'.ljust(width)} | value")
    print(f"{'-' * width}-|------")
    for a, b in rows:
        print(f"{a.ljust(width)} | {b}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
