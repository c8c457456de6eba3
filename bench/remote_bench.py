"""
Remote delivery throughput: messages per second relayed to Postfix's smtp-sink on loopback at
concurrency 20, by qmtwist and, in the same run, by Postfix relaying the same load to the same
sink (issue 6). Needs the Debian package postfix (smtp-sink, postfix, sendmail) and root for the
Postfix part; without them only the qmtwist rows are printed.

    python bench/remote_bench.py [--count 1000] [--concurrency 20] [--size 1024]

Rows (each: seconds from the sink's first message of the run to its last, so start-up is
not counted; the agent row times its own deliver() calls):
- qmtwist agent: RemoteAgent called directly, one deliver() per message, as the queue service
  dispatches them (no queue overhead).
- qmtwist daemon: the messages are queued first (qmail-queue's synchronous injection), then
  `twistd -n qmtwist` is started with `smtproutes` = `:127.0.0.1:PORT`.
- postfix: a private Postfix instance (its own config, queue and log under the temp dir, no
  listener) with `relayhost` = the sink queues the messages through its `sendmail` while
  `defer_transports = smtp` holds them, then the hold is lifted and the queue flushed.
The last line is the ratio of messages per second, qmtwist daemon / postfix.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from qmtwist.home import Home, setup  # noqa: E402

SINK = "/usr/sbin/smtp-sink"


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sink:
    """smtp-sink -c with its counters read from its output file."""

    def __init__(self, base: str) -> None:
        self.port = freePort()
        self.out = os.path.join(base, "sink.out")
        user = ["-u", "nobody"] if os.getuid() == 0 else []
        self.proc = subprocess.Popen(
            [SINK, "-c", *user, f"127.0.0.1:{self.port}", "1024"],
            stdout=open(self.out, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        wait(lambda: _connects(self.port), "smtp-sink listening", 10)

    def messages(self) -> int:
        with open(self.out, "rb") as f:
            data = f.read()
        found = re.findall(rb"mesg=(\d+)", data)
        return int(found[-1]) if found else 0

    def rate(self, before: int, count: int, what: str, deadline: float = 300) -> float:
        """Seconds from the sink's first message after C{before} to the C{count}-th one."""
        first = wait(lambda: self.messages() > before, f"first message ({what})", deadline, 0.002)
        last = wait(lambda: self.messages() >= before + count, f"all messages ({what})",
                    deadline, 0.002)
        return last - first

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def wait(pred, what: str, deadline: float, interval: float = 0.01) -> float:
    end = time.monotonic() + deadline
    while not pred():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(interval)
    return time.monotonic()


def body(size: int, i: int) -> bytes:
    head = b"From: bench@bench.example\nTo: r%d@remote.example\nSubject: bench %d\n\n" % (i, i)
    line = b"x" * 71 + b"\n"
    return head + line * max(1, (size - len(head)) // len(line))


def benchAgent(base: str, sink: Sink, count: int, concurrency: int, size: int) -> float:
    from twisted.internet import defer
    from twisted.internet.threads import deferToThread

    from qmtwist.context import Context, ControlCache
    from qmtwist.delivery import DeliveryRequest, Outcome
    from qmtwist.remote.agent import RemoteAgent

    home = Home(os.path.join(base, "agent-home"))
    setup(home, me="bench.example")
    _control(home, sink.port, concurrency)
    paths = []
    for i in range(count):
        p = os.path.join(base, f"mess{i}")
        with open(p, "wb") as f:
            f.write(b"Received: (qmail 1 invoked by uid 0); 1 Jan 2026 00:00:00 -0000\n")
            f.write(body(size, i))
        paths.append(p)
    before = sink.messages()
    result: list[float] = []

    async def run(reactor) -> None:
        ctx = Context(home, reactor, None, ControlCache(home), deferToThread)
        agent = RemoteAgent(ctx, resolver=object())
        start = time.monotonic()
        ds = []
        for i, p in enumerate(paths):
            rcpt = b"r%d@remote.example" % i
            req = DeliveryRequest(i, p, b"bench@bench.example", rcpt, 0, str(i))
            ds.extend(agent.deliver([req]))
        reports = await defer.gatherResults(ds)
        result.append(time.monotonic() - start)
        bad = [r for r in reports if r.outcome is not Outcome.SUCCESS]
        if bad:
            raise SystemExit(f"{len(bad)} deliveries failed, e.g. {bad[0]}")

    from twisted.internet import reactor

    failures: list = []
    d = defer.ensureDeferred(run(reactor))
    d.addErrback(failures.append)
    d.addBoth(lambda _: reactor.stop())
    reactor.run()  # once per process: the agent row runs once
    if failures:
        failures[0].raiseException()
    wait(lambda: sink.messages() >= before + count, "sink count (agent)", 60)
    return result[0]


def _control(home: Home, port: int, concurrency: int) -> None:
    for name, value in (("smtproutes", f":127.0.0.1:{port}\n"),
                        ("concurrencyremote", f"{concurrency}\n"),
                        # as Postfix's default_destination_concurrency_limit below: one domain
                        # may use every slot (docs/behaviour/queue.md 5.6)
                        ("concurrencydestination", f"{concurrency}\n")):
        with open(os.path.join(home.control, name), "w") as f:
            f.write(value)


def benchDaemon(base: str, sink: Sink, count: int, concurrency: int, size: int) -> float:
    from qmtwist.queue.store import inject

    home = Home(os.path.join(base, "daemon-home"))
    setup(home, me="bench.example")
    _control(home, sink.port, concurrency)
    for i in range(count):
        inject(home.queue, b"bench@bench.example", [b"r%d@remote.example" % i], body(size, i),
               b"by uid 0")
    before = sink.messages()
    log = open(os.path.join(base, "twistd.log"), "wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
         "--pidfile=", "qmtwist", "--home", home.path, "--smtp", "none", "--qmtp", "none",
         "--pop3", "none"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=base,
        env={**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    try:
        return sink.rate(before, count, f"qmtwist daemon, log {log.name}")
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def benchPostfix(base: str, sink: Sink, count: int, concurrency: int, size: int) -> float | None:
    if os.getuid() != 0 or not shutil.which("postfix"):
        return None
    conf, queue, data = (os.path.join(base, d) for d in ("pf-conf", "pf-queue", "pf-data"))
    os.mkdir(conf)
    for name in ("main.cf", "master.cf", "dynamicmaps.cf", "postfix-files", "post-install",
                 "postfix-script"):
        src = os.path.join("/etc/postfix", name)
        if name == "main.cf" and not os.path.exists(src):
            src = "/usr/share/postfix/main.cf.debian"  # a Postfix installed, never configured
        shutil.copy(src, os.path.join(conf, name))
    for name in ("postfix-files.d", "dynamicmaps.cf.d"):
        if os.path.isdir(os.path.join("/etc/postfix", name)):
            shutil.copytree(os.path.join("/etc/postfix", name), os.path.join(conf, name))
    os.mkdir(data)
    os.mkdir(queue)
    shutil.chown(data, "postfix")
    os.chmod(base, 0o755)
    settings = {
        "queue_directory": queue, "data_directory": data, "meta_directory": conf,
        "inet_interfaces": "loopback-only", "inet_protocols": "ipv4",
        "master_service_disable": "inet", "mydestination": "", "myhostname": "bench.example",
        "myorigin": "bench.example", "relayhost": f"[127.0.0.1]:{sink.port}",
        "default_destination_concurrency_limit": str(concurrency),
        "smtp_destination_concurrency_limit": str(concurrency),
        "default_process_limit": str(max(100, 2 * concurrency)),
        "smtp_tls_security_level": "none", "alias_maps": "", "alias_database": "",
        "maillog_file": os.path.join(base, "postfix.log"), "maillog_file_prefixes": base,
        "compatibility_level": "3.6",
        "smtputf8_enable": "no",
    }
    subprocess.run(["postconf", "-c", conf, "-e", *[f"{k}={v}" for k, v in settings.items()]],
                   check=True)
    pf = ["postfix", "-c", conf]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run([*pf, "set-permissions", "create-missing"], check=False, **quiet)
    # queue everything first, held back by defer_transports, then release it at once
    subprocess.run(["postconf", "-c", conf, "-e", "defer_transports=smtp"], check=True)
    subprocess.run([*pf, "start"], check=True, **quiet)
    try:
        for i in range(count):
            subprocess.run(["sendmail", "-C", conf, "-f", "bench@bench.example",
                            f"r{i}@remote.example"], input=body(size, i), check=True,
                           stderr=subprocess.DEVNULL, timeout=30)
        wait(lambda: _files(os.path.join(queue, "deferred")) >= count,
             "postfix deferred queue", 300, 0.1)
        before = sink.messages()
        subprocess.run(["postconf", "-c", conf, "-e", "defer_transports="], check=True)
        subprocess.run([*pf, "reload"], check=True, **quiet)
        subprocess.run(["postqueue", "-c", conf, "-f"], check=True, **quiet)
        return sink.rate(before, count, "postfix")
    finally:
        subprocess.run([*pf, "stop"], check=False, **quiet)


def _files(path: str) -> int:
    return sum(len(files) for _d, _s, files in os.walk(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args()
    if not os.access(SINK, os.X_OK):
        raise SystemExit("smtp-sink missing: apt-get install postfix")
    base = tempfile.mkdtemp(prefix="remote-bench-")
    sink = Sink(base)
    rows = []
    try:
        daemon = benchDaemon(base, sink, args.count, args.concurrency, args.size)
        agent = benchAgent(base, sink, args.count, args.concurrency, args.size)
        postfix = benchPostfix(base, sink, args.count, args.concurrency, args.size)
        rows = [("qmtwist agent", agent), ("qmtwist daemon", daemon), ("postfix", postfix)]
    finally:
        sink.stop()
    print(f"{args.count} messages of {args.size} bytes, concurrency {args.concurrency}")
    for name, seconds in rows:
        if seconds is None:
            print(f"{name:16} skipped (needs root and postfix)")
        else:
            print(f"{name:16} {seconds:8.2f} s {args.count / seconds:10.1f} msg/s")
    if postfix:
        print(f"ratio qmtwist daemon / postfix (msg/s): {postfix / daemon:.2f}")
    elif postfix is None:
        pass
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
