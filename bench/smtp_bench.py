"""
SMTP -> Maildir throughput of qmtwist against Postfix, both measured in the same invocation with
the same load, the same 10 system users and the same disk (the performance issue's measurement).
Needs root and the Debian package postfix (smtp-source, postfix); strace (package strace) only
for --strace. docs/bench.md explains every column and holds measured figures.

    python bench/smtp_bench.py [--count 2000] [--rows 1x1,10x1,50x1,10x10] [--rounds 1]
                               [--log-devnull] [--strace] [--json] [--keep]

Load: Postfix's smtp-source over loopback, one connection per message (`-s SESSIONS -m COUNT
-l SIZE -N -r RCPTS`). Its `-N` numbers the recipients 1benchu, 2benchu, ...; both servers map
NUMBERbenchu to the system user benchu(NUMBER mod 10) (qmtwist: users/assign `=` lines; Postfix:
a texthash alias_maps), so one message's 10 recipients go to the 10 users. Users benchu0..9 are
created with useradd (homes in the temp dir) and deleted at the end.

Servers, each started fresh for every row, warmed up (--warmup messages), then measured:
- qmtwist: `twistd -n qmtwist` as root (per-uid local helpers), SMTP on 127.0.0.1:PORT, a home
  from qmtwist.home.setup, defaultdelivery ./Maildir/, log to a file (twistd --logfile) or, with
  --log-devnull, to stdout = /dev/null. `--smtp-per-ip 0 --smtp-concurrency 100`: Postfix exempts
  loopback ($mynetworks) from its per-client limits and runs up to 100 smtpd processes.
- postfix: a private instance (config, queue and data directories in the temp dir, smtpd on its
  own loopback port, no chroot), home_mailbox = Maildir/, mydestination = the bench domain,
  default durability; its log goes to a file through postlogd (/dev/null with --log-devnull).
  /etc/postfix is only read (postfix-files, dynamicmaps.cf); a running system Postfix is ignored.

Per row and server: accepted msg/s (COUNT / smtp-source wall time), delivered msg/s (COUNT /
time from smtp-source's start to the last Maildir file in new/, seen with inotify), CPU ms per
message user/sys of the server's whole process tree (twistd and its helpers; Postfix's master
and every descendant, exited ones through the master's cutime/cstime), from the start of the
load until the queue is empty; fsync+fdatasync+syncfs calls per message (--strace: the server
runs under strace -f --seccomp-bpf from its start, calls counted by timestamp in the measured
window); disk flushes per message from /proc/diskstats (flush requests of the device holding the
temp dir; writes completed when it reports no flushes). Between runs the Maildir files are moved
away, then sync and --settle seconds of rest.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import pwd
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_latency import STEPS, StepProbe  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = REPO  # the tree qmtwist runs from: this checkout, or --src

SOURCE = "/usr/sbin/smtp-source"
DOMAIN = "bench.example"
SENDER = "bench@client.example"
USERS = [f"benchu{i}" for i in range(10)]
MARK = "qmtwist smtp_bench"  # GECOS of the accounts this bench creates
TICK = os.sysconf("SC_CLK_TCK")
SYNC_CALLS = ("fsync", "fdatasync", "syncfs")
# Postfix's default_process_limit: the most smtpd processes it runs at once.
SMTP_CONCURRENCY = 100


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.settimeout(5)
            return s.recv(4).startswith(b"220")
    except OSError:
        return False


def wait(pred: Callable[[], bool], what: str, deadline: float, interval: float = 0.05) -> float:
    end = time.monotonic() + deadline
    while not pred():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)
    return time.monotonic()


def files(path: str) -> int:
    return sum(len(names) for _d, _s, names in os.walk(path))


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8192))
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
    except OSError as e:
        return f"({path}: {e})"


# --- processes and their CPU -----------------------------------------------------------------


class Proc:
    __slots__ = ("comm", "ppid", "utime", "stime", "cutime", "cstime", "start")

    def __init__(self, comm: str, fields: list[bytes]) -> None:
        self.comm = comm
        self.ppid = int(fields[1])
        self.utime, self.stime = int(fields[11]), int(fields[12])
        self.cutime, self.cstime = int(fields[13]), int(fields[14])
        self.start = int(fields[19])


def processTable() -> dict[int, Proc]:
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        close = data.rindex(b")")
        comm = data[data.index(b"(") + 1:close].decode(errors="replace")
        table[int(name)] = Proc(comm, data[close + 2:].split())
    return table


def descendants(table: dict[int, Proc], root: int) -> dict[int, Proc]:
    """C{root} and every process whose parent chain reaches it."""
    children: dict[int, list[int]] = {}
    for pid, p in table.items():
        children.setdefault(p.ppid, []).append(pid)
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in tree:
            tree[pid] = table[pid]
            todo.extend(children.get(pid, ()))
    return tree


def cpuSnapshot(root: int) -> dict[int, Proc]:
    return descendants(processTable(), root)


def cpuDelta(before: dict[int, Proc], after: dict[int, Proc], root: int) -> dict[str, Any]:
    """
    CPU of the tree between two snapshots, in clock ticks: the user and system time of every
    member alive at the end, plus the cutime/cstime of each member (children it reaped, which
    covers short-lived processes and those that exited during the run), minus the same sums at
    the start. C{by} splits it by command name, reaped children apart.
    """
    user = sys_ = 0
    by: dict[str, list[int]] = {}

    def add(key: str, u: int, s: int) -> None:
        v = by.setdefault(key, [0, 0])
        v[0] += u
        v[1] += s

    for pid, p in after.items():
        b: Proc | None = before.get(pid)
        if b is not None and b.start != p.start:
            b = None
        bu, bs, bcu, bcs = (b.utime, b.stime, b.cutime, b.cstime) if b else (0, 0, 0, 0)
        u, s = p.utime - bu, p.stime - bs
        cu, cs = p.cutime - bcu, p.cstime - bcs
        user += u + cu
        sys_ += s + cs
        add("daemon" if pid == root else p.comm, u, s)
        if cu or cs:
            add("reaped children", cu, cs)
    for pid, gone in before.items():
        now = after.get(pid)
        if now is None or now.start != gone.start:  # its time moved into its parent's cutime
            user -= gone.utime + gone.cutime
            sys_ -= gone.stime + gone.cstime
            add("reaped children", -(gone.utime + gone.cutime), -(gone.stime + gone.cstime))
    return {"user": user, "sys": sys_, "by": by,
            "processes": sorted({p.comm for p in after.values()})}


def hostBusy() -> int:
    """Busy clock ticks of all CPUs (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return sum(fields) - fields[3] - fields[4]


def ownTicks() -> int:
    """CPU ticks of this process and its reaped children (smtp-source)."""
    t = os.times()
    return round((t.user + t.system + t.children_user + t.children_system) * TICK)


def killTree(pids: dict[int, int]) -> None:
    """SIGKILL the processes of C{pids} (pid -> start time) that are still the same processes."""
    table = processTable()
    for pid, start in pids.items():
        p = table.get(pid)
        if p is not None and p.start == start:
            try:
                os.kill(pid, signal.SIGKILL)
                log(f"killed leftover process {pid} ({p.comm})")
            except ProcessLookupError:
                pass


# --- disk flushes ----------------------------------------------------------------------------


class DiskStats:
    """Flush requests (or writes completed) of the block device holding C{path}."""

    def __init__(self, path: str) -> None:
        self.device = self._device(path)
        sample = self._fields()
        self.flushesReported = sample is not None and len(sample) > 18 and int(sample[18]) > 0
        self.field = "flushes" if self.flushesReported else "writes"

    @staticmethod
    def _device(path: str) -> str | None:
        st = os.stat(path)
        major, minor = os.major(st.st_dev), os.minor(st.st_dev)
        if major == 0:  # btrfs, overlay...: the mount's source device, if it is one
            best = ("", "")
            real = os.path.realpath(path)
            with open("/proc/self/mountinfo") as f:
                for line in f:
                    parts = line.split()
                    mount, source = parts[4], parts[parts.index("-") + 2]
                    if (real == mount or real.startswith(mount.rstrip("/") + "/")) and \
                            len(mount) >= len(best[0]):
                        best = (mount, source)
            if not best[1].startswith("/dev/"):
                return None
            st = os.stat(best[1])
            major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        sysPath = os.path.realpath(f"/sys/dev/block/{major}:{minor}")
        if not os.path.exists(sysPath):
            return None
        if os.path.exists(os.path.join(sysPath, "partition")):
            sysPath = os.path.dirname(sysPath)  # flushes go to the whole disk
        return os.path.basename(sysPath)

    def _fields(self) -> list[str] | None:
        if self.device is None:
            return None
        with open("/proc/diskstats") as f:
            for line in f:
                fields = line.split()
                if fields[2] == self.device:
                    return fields
        return None

    def read(self) -> dict[str, int]:
        fields = self._fields()
        if fields is None:
            return {}
        out = {"writes": int(fields[7])}
        if len(fields) > 18:
            out["flushes"] = int(fields[18])
        return out


# --- Maildir watch ---------------------------------------------------------------------------


class MaildirWatch:
    """Counts files appearing in the users' Maildir/new with inotify (link or rename into new/)."""

    IN_MOVED_TO, IN_CREATE, IN_Q_OVERFLOW = 0x80, 0x100, 0x4000

    def __init__(self, dirs: list[str]) -> None:
        self.dirs = dirs
        self.count = 0
        self.last = 0.0
        self.overflow = False
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        for d in dirs:
            if libc.inotify_add_watch(self.fd, os.fsencode(d),
                                      self.IN_CREATE | self.IN_MOVED_TO) < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {d}")

    def drain(self) -> None:
        now = time.monotonic()
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                offset += 16 + length
                if mask & self.IN_Q_OVERFLOW:
                    self.overflow = True
                elif mask & (self.IN_CREATE | self.IN_MOVED_TO):
                    self.count += 1
                    self.last = now

    def listed(self) -> int:
        return sum(len(os.listdir(d)) for d in self.dirs)

    def close(self) -> None:
        os.close(self.fd)


# --- strace ----------------------------------------------------------------------------------


#: --syscalls: trace every call, not only the sync calls (set by main)
TRACE_ALL = False


def straceCommand(out: str) -> list[str]:
    if TRACE_ALL:
        return ["strace", "-f", "-qq", "-ttt", "-e", "signal=none", "-o", out]
    return ["strace", "-f", "--seccomp-bpf", "-qq", "-ttt", "-T", "-e", "signal=none", "-e",
            "trace=" + ",".join(SYNC_CALLS), "-o", out]


def taskRoles(root: int, tree: dict[int, Proc]) -> dict[int, str]:
    """
    Every thread id of the tree alive now -> its process's role: C{daemon} for the root's own
    threads (qmtwist's reactor and its file thread), else the command name (qmtwist's per-uid
    helpers are C{helper}); threads of processes that exited before now are unknown here.
    """
    roles = {}
    for pid, p in tree.items():
        role = "daemon" if pid == root else ("helper" if p.comm.startswith("python") else p.comm)
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            tids = [str(pid)]
        for tid in tids:
            roles[int(tid)] = role
    return roles


def countSyscalls(path: str, t0: float, t1: float,
                  roles: dict[int, str]) -> dict[str, dict[str, int]]:
    """Every call that started between t0 and t1, by role of its thread (L{taskRoles}) and name;
    threads of processes gone by the end count as C{exited}."""
    pattern = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]")
    out: dict[str, dict[str, int]] = {}
    with open(path, errors="replace") as f:
        for line in f:
            m = pattern.match(line)
            if not m or "resumed>" in line or not t0 <= float(m.group(2)) <= t1:
                continue
            role = roles.get(int(m.group(1)), "exited")
            by = out.setdefault(role, {})
            by[m.group(3)] = by.get(m.group(3), 0) + 1
    return out


def countSyncs(path: str, t0: float, t1: float) -> dict[str, int]:
    """Calls of C{SYNC_CALLS} that started between wall-clock times t0 and t1."""
    pattern = re.compile(r"^\d+\s+(\d+\.\d+)\s+(%s)\(" % "|".join(SYNC_CALLS))
    counts = dict.fromkeys(SYNC_CALLS, 0)
    with open(path, errors="replace") as f:
        for line in f:
            m = pattern.match(line)
            if m and t0 <= float(m.group(1)) <= t1:
                counts[m.group(2)] += 1
    return counts


# --- users -----------------------------------------------------------------------------------


class BenchUsers:
    """benchu0..9 with a Maildir each; accounts this bench creates are deleted at the end."""

    ACCOUNT_FILES = ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow", "/etc/subuid",
                     "/etc/subgid")

    def __init__(self, base: str) -> None:
        self.base = base
        self.created: list[str] = []
        self.saved: dict[str, bytes] = {}
        self.users: list[pwd.struct_passwd] = []

    def setUp(self) -> None:
        for path in self.ACCOUNT_FILES:
            for p in (path, path + "-"):
                if os.path.exists(p):
                    with open(p, "rb") as f:
                        self.saved[p] = f.read()
        for name in USERS:
            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                pw = None
            if pw is not None and pw.pw_gecos != MARK:
                raise SystemExit(f"account {name} exists and is not this bench's: not touching it")
            if pw is not None:  # left over by an interrupted run of this bench
                subprocess.run(["userdel", name], check=True)
            home = os.path.join(self.base, "users", name)
            subprocess.run(["useradd", "-M", "-d", home, "-s", "/usr/sbin/nologin", "-c", MARK,
                            "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name], check=True)
            self.created.append(name)
            pw = pwd.getpwnam(name)
            for d in (home, *(os.path.join(home, "Maildir", s) for s in ("", "tmp", "new",
                                                                          "cur"))):
                os.makedirs(d, 0o700, exist_ok=True)
                os.chown(d, pw.pw_uid, pw.pw_gid)
            self.users.append(pw)

    def newDirs(self) -> list[str]:
        return [os.path.join(pw.pw_dir, "Maildir", "new") for pw in self.users]

    def clear(self, trash: str) -> int:
        """Move every Maildir/new away (into C{trash}, then deleted); the number of files."""
        moved = 0
        for pw in self.users:
            new = os.path.join(pw.pw_dir, "Maildir", "new")
            target = os.path.join(trash, pw.pw_name)
            os.rename(new, target)
            os.mkdir(new, 0o700)
            os.chown(new, pw.pw_uid, pw.pw_gid)
            moved += len(os.listdir(target))
            shutil.rmtree(target)
            tmp = os.path.join(pw.pw_dir, "Maildir", "tmp")
            for name in os.listdir(tmp):
                os.unlink(os.path.join(tmp, name))
        return moved

    def tearDown(self) -> None:
        for name in self.created:
            subprocess.run(["userdel", name], check=False)
            spool = os.path.join("/var/mail", name)
            if os.path.isfile(spool) and os.path.getsize(spool) == 0:
                os.unlink(spool)
        for path in self.ACCOUNT_FILES:
            if path not in self.saved:
                continue
            with open(path, "rb") as f:
                now = f.read()
            if now != self.saved[path]:
                log(f"warning: {path} differs from before the bench")
                continue
            backup = path + "-"
            if backup in self.saved:  # shadow's tools rewrote the backup copy: put it back
                with open(backup, "rb") as f:
                    if f.read() != self.saved[backup]:
                        mode = os.stat(backup).st_mode & 0o7777
                        with open(backup, "wb") as g:
                            g.write(self.saved[backup])
                        os.chmod(backup, mode)
            elif os.path.exists(backup):  # a backup copy the bench's useradd/userdel made
                os.unlink(backup)

    def mapping(self, n: int) -> list[tuple[str, pwd.struct_passwd]]:
        """smtp-source -N's recipients 1benchu .. Nbenchu and their users."""
        return [(f"{i}benchu", self.users[i % len(self.users)]) for i in range(1, n + 1)]


# --- servers ---------------------------------------------------------------------------------


class Server:
    name = ""
    port = 0
    pid = 0  # root of the process tree measured
    logPath = ""
    straceOut: str | None = None

    def start(self) -> None:
        raise NotImplementedError

    def remember(self) -> None:
        """Note the processes of the tree, so that none outlives L{stop}."""
        raise NotImplementedError

    def drained(self) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class Qmtwist(Server):
    name = "qmtwist"

    def __init__(self, base: str, users: BenchUsers, maxRecipients: int, logDevnull: bool,
                 useStrace: bool) -> None:
        from qmtwist.home import Home, setup

        self.base = base
        self.home = Home(os.path.join(base, "qmtwist-home"))
        setup(self.home, me=DOMAIN)
        with open(os.path.join(self.home.path, "rules", "smtp"), "w") as f:
            # Postfix's mynetworks = 127.0.0.0/8 trusts loopback clients: RELAYCLIENT is the
            # same trust here, and like Postfix without milters it skips the inbound
            # SPF/DKIM/DMARC checks (docs/behaviour/authentication.md 22.1)
            f.write('127.0.0.1:allow,RELAYCLIENT=""\n')
        lines = [f"={pw.pw_name}:{pw.pw_name}:{pw.pw_uid}:{pw.pw_gid}:{pw.pw_dir}:::\n"
                 for pw in users.users]
        lines += [f"={local}:{pw.pw_name}:{pw.pw_uid}:{pw.pw_gid}:{pw.pw_dir}:::\n"
                  for local, pw in users.mapping(maxRecipients)]
        with open(os.path.join(self.home.users, "assign"), "w") as f:
            f.writelines(lines)
        self.logDevnull = logDevnull
        self.useStrace = useStrace
        self.proc: subprocess.Popen | None = None
        self.seen: dict[int, int] = {}
        self.runs = 0
        self.extra: list[str] = []  # --qmtwist-option values

    def start(self) -> None:
        self.runs += 1
        self.port = freePort()
        self.logPath = os.path.join(self.base, f"qmtwist-{self.runs}.log")
        cmd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
               "--pidfile="]
        if not self.logDevnull:
            cmd += ["--logfile", self.logPath]  # never --logfile /dev/null: LogFile rotates it
        cmd += ["qmtwist", "--home", self.home.path,
                "--smtp", f"tcp:{self.port}:interface=127.0.0.1", "--qmtp", "none",
                "--pop3", "none", "--smtp-per-ip", "0",
                "--smtp-concurrency", str(SMTP_CONCURRENCY), *self.extra]
        if self.useStrace:
            self.straceOut = os.path.join(self.base, f"qmtwist-{self.runs}.strace")
            cmd = straceCommand(self.straceOut) + cmd
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        out = subprocess.DEVNULL if self.logDevnull else self.logPath + ".out"
        with open(out, "wb") as f:  # twistd's stdout: its start-up errors, or nothing
            proc = self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, cwd=self.base, env=env)
        try:
            wait(lambda: proc.poll() is not None or connects(self.port), "qmtwist listening", 60)
            if proc.poll() is not None:
                raise RuntimeError(f"qmtwist exited: {tail(self.logPath)}")
            self.pid = proc.pid
            if self.useStrace:  # the daemon is strace's child
                kids = [pid for pid, p in processTable().items() if p.ppid == proc.pid]
                self.pid = kids[0]
        except BaseException:
            self.stop()
            raise

    def remember(self) -> None:
        if self.pid:
            for pid, p in cpuSnapshot(self.pid).items():
                self.seen[pid] = p.start

    def drained(self) -> bool:
        q = self.home.sub("queue")
        return all(files(os.path.join(q, d)) == 0 for d in ("mess", "todo", "intd", "pid"))

    def stop(self) -> None:
        if self.proc is None:
            return
        self.remember()
        target = self.pid or self.proc.pid
        for sig, grace in ((signal.SIGTERM, 60), (signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            if self.proc.poll() is not None:
                break
            try:
                os.kill(target, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"qmtwist did not stop after {sig.name}")
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        time.sleep(0.2)
        killTree(self.seen)  # helpers still alive after their daemon ended
        self.seen.clear()
        self.proc = None
        self.pid = 0


POSTFIX_SERVICES = """\
{smtp} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
virtual unix - n n - - virtual
lmtp unix - - n - - lmtp
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


class Postfix(Server):
    name = "postfix"

    def __init__(self, base: str, users: BenchUsers, maxRecipients: int, logDevnull: bool,
                 useStrace: bool) -> None:
        self.base = base
        self.conf, self.queue, self.data = (os.path.join(base, d)
                                            for d in ("pf-conf", "pf-queue", "pf-data"))
        for d in (self.conf, self.queue, self.data):
            os.mkdir(d, 0o755)
        shutil.chown(self.data, "postfix")
        for name in ("dynamicmaps.cf", "postfix-files", "post-install", "postfix-script"):
            if os.path.exists(os.path.join("/etc/postfix", name)):
                shutil.copy(os.path.join("/etc/postfix", name), self.conf)
        for name in ("postfix-files.d", "dynamicmaps.cf.d"):
            if os.path.isdir(os.path.join("/etc/postfix", name)):
                shutil.copytree(os.path.join("/etc/postfix", name), os.path.join(self.conf, name))
        self.port = freePort()
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(POSTFIX_SERVICES.format(smtp=f"127.0.0.1:{self.port}"))
        aliases = os.path.join(self.conf, "aliases")
        with open(aliases, "w") as f:
            f.writelines(f"{local} {pw.pw_name}\n" for local, pw in users.mapping(maxRecipients))
        with open(os.path.join(self.conf, "main.cf"), "w"):
            pass
        self.logPath = os.path.join(base, "postfix.log")
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue, "data_directory": self.data,
            "meta_directory": self.conf,
            "myhostname": DOMAIN, "mydomain": DOMAIN, "myorigin": DOMAIN,
            "mydestination": DOMAIN, "mynetworks": "127.0.0.0/8", "relayhost": "",
            "inet_interfaces": "127.0.0.1", "inet_protocols": "ipv4",
            "alias_maps": f"texthash:{aliases}", "alias_database": "",
            "home_mailbox": "Maildir/", "biff": "no", "append_dot_mydomain": "no",
            "smtputf8_enable": "no",
            "maillog_file": "/dev/null" if logDevnull else self.logPath,
            "maillog_file_prefixes": f"{base}, /dev/null",
        }
        self.postconf(*[f"{k}={v}" for k, v in settings.items()])
        quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        subprocess.run(["postfix", "-c", self.conf, "set-permissions", "create-missing"],
                       check=False, **quiet)
        self.useStrace = useStrace
        self.runs = 0
        self.tracer: subprocess.Popen | None = None
        self.seen: dict[int, int] = {}

    def postconf(self, *assignments: str) -> None:
        subprocess.run(["postconf", "-c", self.conf, "-e", *assignments], check=True)

    def masterPid(self) -> int:
        try:
            with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                pid = int(f.read().split()[0])
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError, IndexError):
            return 0

    def start(self) -> None:
        self.runs += 1
        cmd = ["postfix", "-c", self.conf, "start"]
        with open(os.path.join(self.base, f"postfix-start-{self.runs}.out"), "wb") as out:
            if self.useStrace:
                self.straceOut = os.path.join(self.base, f"postfix-{self.runs}.strace")
                self.tracer = subprocess.Popen(straceCommand(self.straceOut) + cmd, stdout=out,
                                               stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL)
            else:
                subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait(lambda: self.masterPid() != 0 and connects(self.port), "postfix listening", 60)
            self.pid = self.masterPid()
        except BaseException:
            self.stop()
            raise

    def remember(self) -> None:
        pid = self.masterPid() or self.pid
        if pid:
            for p, proc in cpuSnapshot(pid).items():
                self.seen[p] = proc.start

    def drained(self) -> bool:
        return all(files(os.path.join(self.queue, d)) == 0
                   for d in ("maildrop", "incoming", "active", "deferred", "hold"))

    def stop(self) -> None:
        self.remember()
        quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        if self.masterPid():
            subprocess.run(["postfix", "-c", self.conf, "stop"], check=False, **quiet)
            try:
                wait(lambda: self.masterPid() == 0, "postfix stop", 30, 0.1)
            except RuntimeError:
                subprocess.run(["postfix", "-c", self.conf, "abort"], check=False, **quiet)
                time.sleep(1)
        time.sleep(0.5)  # the children leave once their master is gone
        killTree(self.seen)
        self.seen.clear()
        if self.tracer is not None:
            try:
                self.tracer.wait(30)
            except subprocess.TimeoutExpired:
                self.tracer.kill()
                self.tracer.wait(10)
            self.tracer = None
        self.pid = 0


# --- one measurement -------------------------------------------------------------------------


def smtpSource(port: int, sessions: int, count: int, size: int, rcpts: int) -> list[str]:
    return [SOURCE, "-s", str(sessions), "-m", str(count), "-l", str(size), "-N",
            "-r", str(rcpts), "-f", SENDER, "-t", f"benchu@{DOMAIN}", f"127.0.0.1:{port}"]


def load(server: Server, users: BenchUsers, sessions: int, count: int, size: int, rcpts: int,
         errPath: str, deadline: float, probe: StepProbe | None = None) -> dict[str, float]:
    """
    Run smtp-source and wait for every delivery; times relative to smtp-source's start.
    C{probe}: started with smtp-source and stopped when it ends; its messages are waited for too.
    """
    watch = MaildirWatch(users.newDirs())
    expected = count * rcpts
    err = open(errPath, "wb")
    proc: subprocess.Popen | None = None
    pidfd = None
    try:
        t0 = time.monotonic()
        proc = subprocess.Popen(smtpSource(server.port, sessions, count, size, rcpts),
                                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        pidfd = os.pidfd_open(proc.pid) if hasattr(os, "pidfd_open") else None
        if probe is not None:
            probe.start()
        accepted = None
        end = t0 + deadline
        lastChange, lastCount = t0, 0
        while watch.count < expected or accepted is None:
            fds = [watch.fd] + ([pidfd] if pidfd is not None and accepted is None else [])
            ready, _, _ = select.select(fds, [], [], 0.05)
            now = time.monotonic()
            if accepted is None and (proc.poll() is not None):
                accepted = now
                if probe is not None:
                    probe.stop()
                    expected += probe.sent
                if proc.returncode != 0:
                    raise RuntimeError(f"smtp-source exited {proc.returncode}: {tail(errPath)}")
            if watch.fd in ready:
                watch.drain()
                time.sleep(0.001)  # let a few events gather
            if watch.overflow:  # inotify lost events: count by listing from here on
                n = watch.listed()
                if n > watch.count:
                    watch.count, watch.last = n, now
            if watch.count != lastCount:
                lastChange, lastCount = now, watch.count
            if now > end or now - lastChange > 60:
                raise RuntimeError(
                    f"{server.name}: {watch.count} of {expected} deliveries after "
                    f"{now - t0:.0f} s; log: {tail(server.logPath)}")
        return {"accept": accepted - t0, "deliver": watch.last - t0, "t0": t0,
                "listed": watch.listed(), "expected": expected}
    finally:
        if probe is not None:
            probe.stop()
        if pidfd is not None:
            os.close(pidfd)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        watch.close()
        err.close()


def spySummary(path: str, top: int = 12) -> str:
    """
    The frames with the most samples of their own (holding the GIL: --gil), for the daemon and
    for its helpers, from a py-spy raw profile.
    """
    own: dict[str, dict[str, int]] = {}
    try:
        with open(path, errors="replace") as f:
            for line in f:
                stack, _, n = line.rstrip("\n").rpartition(" ")
                frames = stack.split(";")
                procs = [x for x in frames if x.startswith("process ")]
                proc = "helpers" if procs and "qmtwist.local.child" in procs[-1] else "daemon"
                frames = [x for x in frames if not x.startswith("process ")] or ["?"]
                leaf = re.sub(r"\s*\(/[^)]*/site-packages/", " (", frames[-1])
                d = own.setdefault(proc, {})
                d[leaf] = d.get(leaf, 0) + int(n)
    except (OSError, ValueError) as e:
        return f"py-spy summary: {e}"
    out = []
    for proc, d in own.items():
        total = sum(d.values())
        out.append(f"py-spy {proc}: {total} samples, most self time:")
        for leaf, samples in sorted(d.items(), key=lambda kv: -kv[1])[:top]:
            out.append(f"  {100 * samples / total:5.1f}%  {leaf}")
    return "\n".join(out)


def settle(users: BenchUsers, trash: str, seconds: float) -> None:
    users.clear(trash)
    os.sync()
    time.sleep(seconds)


def measure(server: Server, users: BenchUsers, disk: DiskStats, args: argparse.Namespace,
            sessions: int, rcpts: int, trash: str, pyspy: str | None) -> dict[str, Any]:
    count = args.count
    deadline = max(300.0, count * rcpts / 20)
    server.start()
    spy = None
    try:
        if args.warmup:
            load(server, users, sessions, args.warmup, args.size, rcpts,
                 os.path.join(args.base, "warmup.err"), deadline)
            wait(server.drained, f"{server.name} queue empty after warm-up", 120, 0.02)
        settle(users, trash, args.settle)
        server.remember()
        if pyspy and server.name == "qmtwist":
            spyOut = os.path.join(pyspy, f"qmtwist-s{sessions}-r{rcpts}-{int(time.time())}.txt")
            spy = subprocess.Popen(
                [shutil.which("py-spy") or "py-spy", "record", "--pid", str(server.pid),
                 "--subprocesses", "--nonblocking", "--gil", "--rate", "100", "--format", "raw",
                 "--output", spyOut], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        root = server.pid
        cpu0 = cpuSnapshot(root)
        busy0, own0 = hostBusy(), ownTicks()
        disk0 = disk.read()
        wall0 = time.time()
        probe = (StepProbe(server.port, SENDER, f"{USERS[0]}@{DOMAIN}", args.size)
                 if args.probe else None)
        times = load(server, users, sessions, count, args.size, rcpts,
                     os.path.join(args.base, "smtp-source.err"), deadline, probe)
        drainedAt = wait(server.drained, f"{server.name} queue empty", 120, 0.02)
        wall1 = time.time()
        cpu1 = cpuSnapshot(root)
        roles = taskRoles(root, cpu1) if TRACE_ALL else {}
        busy1, own1 = hostBusy(), ownTicks()
        disk1 = disk.read()
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
            spy = None
            log(f"py-spy profile: {spyOut}")
            log(spySummary(spyOut))
        server.remember()
    finally:
        if spy is not None:
            spy.kill()
            spy.wait()
        server.stop()
    expected = times["expected"]
    if times["listed"] != expected:
        raise RuntimeError(f"{server.name}: {times['listed']} files in new/, expected {expected}")
    cpu = cpuDelta(cpu0, cpu1, root)
    ms = 1000 / TICK / count
    row: dict[str, Any] = {
        "server": server.name, "sessions": sessions, "recipients": rcpts, "messages": count,
        "deliveries": expected,
        "accept_seconds": round(times["accept"], 3),
        "deliver_seconds": round(times["deliver"], 3),
        "drained_seconds": round(drainedAt - times["t0"], 3),
        "accepted_per_s": round(count / times["accept"], 1),
        "delivered_per_s": round(count / times["deliver"], 1),
        "deliveries_per_s": round(expected / times["deliver"], 1),
        "cpu_user_ms_per_msg": round(cpu["user"] * ms, 3),
        "cpu_sys_ms_per_msg": round(cpu["sys"] * ms, 3),
        "cpu_ms_per_msg": round((cpu["user"] + cpu["sys"]) * ms, 3),
        "cpu_by_process_ms_per_msg": {k: [round(v[0] * ms, 3), round(v[1] * ms, 3)]
                                      for k, v in sorted(cpu["by"].items()) if v != [0, 0]},
        "processes": cpu["processes"],
        # cores busy with anything but the server and this bench (with smtp-source): other load
        "other_cores": round(max(0, (busy1 - busy0) - (cpu["user"] + cpu["sys"]) -
                                 (own1 - own0)) / TICK / (wall1 - wall0), 2),
        "bench_cores": round((own1 - own0) / TICK / (wall1 - wall0), 2),
    }
    if probe is not None:
        row["probe_ms"] = probe.summary()
    if disk0 and disk1:
        row["disk_device"] = disk.device
        row["disk_writes_per_msg"] = round((disk1["writes"] - disk0["writes"]) / count, 2)
        if "flushes" in disk1:
            row["disk_flushes_per_msg"] = round((disk1["flushes"] - disk0["flushes"]) / count, 2)
        row["disk_per_msg"] = row[f"disk_{disk.field}_per_msg"]
    if server.straceOut and TRACE_ALL:
        every = countSyscalls(server.straceOut, wall0, wall1, roles)
        row["syscalls_per_msg"] = {
            role: dict(sorted(((k, round(v / count, 2)) for k, v in by.items()),
                              key=lambda kv: -kv[1]))
            for role, by in every.items()}
    if server.straceOut:
        calls = countSyncs(server.straceOut, wall0, wall1)
        row["sync_calls_per_msg"] = {k: round(v / count, 2) for k, v in calls.items()}
        row["syncs_per_msg"] = round(sum(calls.values()) / count, 2)
    return row


# --- output ----------------------------------------------------------------------------------


def rowName(sessions: int, rcpts: int) -> str:
    return f"{sessions} sess, {rcpts} rcpt"


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def summarize(results: list[dict[str, Any]], rows: list[tuple[int, int]]) -> list[dict[str, Any]]:
    out = []
    for sessions, rcpts in rows:
        med = {}
        for name in ("qmtwist", "postfix"):
            runs = [r for r in results if r["server"] == name and r["sessions"] == sessions
                    and r["recipients"] == rcpts]
            if runs:
                med[name] = {k: statistics.median(r[k] for r in runs)
                             for k in ("accepted_per_s", "delivered_per_s", "cpu_ms_per_msg")}
        if len(med) == 2:
            q, p = med["qmtwist"], med["postfix"]
            out.append({
                "sessions": sessions, "recipients": rcpts,
                "accepted_ratio": round(q["accepted_per_s"] / p["accepted_per_s"], 2),
                "delivered_ratio": round(q["delivered_per_s"] / p["delivered_per_s"], 2),
                "cpu_ratio": round(q["cpu_ms_per_msg"] / p["cpu_ms_per_msg"], 2)
                if p["cpu_ms_per_msg"] else None,
            })
    return out


def printTable(doc: dict[str, Any]) -> None:
    s = doc["settings"]
    print(f"SMTP -> Maildir: {s['count']} messages of {s['size']} bytes per run, smtp-source over "
          f"loopback, one connection per message, {len(USERS)} users; log "
          f"{'/dev/null' if s['log_devnull'] else 'to a file'}"
          f"{'; under strace' if s['strace'] else ''}; {doc['host']['cores']} cores; "
          f"qmtwist {doc['git']}")
    disk = doc.get("disk_field", "flushes")
    head = (f"{'row':<18}{'server':<9}{'accept/s':>9}{'deliver/s':>10}{'usr ms':>8}{'sys ms':>8}"
            f"{'cpu ms':>8}{'syncs':>7}{disk[:7]:>8}{'other':>6}")
    print(head)
    for r in doc["runs"]:
        print(f"{rowName(r['sessions'], r['recipients']):<18}{r['server']:<9}"
              f"{r['accepted_per_s']:>9.1f}{r['delivered_per_s']:>10.1f}"
              f"{r['cpu_user_ms_per_msg']:>8.2f}{r['cpu_sys_ms_per_msg']:>8.2f}"
              f"{r['cpu_ms_per_msg']:>8.2f}{fmt(r.get('syncs_per_msg'), '.2f'):>7}"
              f"{fmt(r.get('disk_per_msg'), '.2f'):>8}{r['other_cores']:>6.2f}")
    for x in doc["summary"]:
        print(f"ratio qmtwist/postfix, {rowName(x['sessions'], x['recipients'])}: "
              f"accepted {x['accepted_ratio']:.2f}x, delivered {x['delivered_ratio']:.2f}x, "
              f"cpu per message {fmt(x['cpu_ratio'], '.2f')}x")
    for r in doc["runs"]:
        if "probe_ms" in r:
            pr = r["probe_ms"]
            steps = ", ".join(f"{k} {pr[k][0]:g}/{pr[k][1]:g}" for k in (*STEPS, "total")
                              if k in pr)
            print(f"probe ms median/p90 {rowName(r['sessions'], r['recipients'])} "
                  f"{r['server']} ({pr['sessions']} sessions): {steps}")
    for r in doc["runs"]:
        for role, by in sorted(r.get("syscalls_per_msg", {}).items()):
            top = ", ".join(f"{k} {v:g}" for k, v in list(by.items())[:14])
            print(f"syscalls/msg {rowName(r['sessions'], r['recipients'])} {r['server']} "
                  f"{role}: {sum(by.values()):.1f} ({top})")
    print("per message: usr/sys/cpu ms = CPU of the server's process tree (qmtwist: twistd and "
          "its per-uid helpers; postfix: master and all descendants, exited ones included); "
          f"syncs = fsync+fdatasync+syncfs calls (--strace); {disk} = {disk} of "
          f"/dev/{doc.get('disk_device')} (/proc/diskstats); other = cores busy with other "
          "processes during the run (noise)")


def gitState() -> str:
    if SRC != REPO:
        return f"from {SRC}"
    try:
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "qmtwist"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parseRows(text: str) -> list[tuple[int, int]]:
    rows = []
    for item in text.split(","):
        sessions, _, rcpts = item.strip().partition("x")
        rows.append((int(sessions), int(rcpts or 1)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=2000, help="messages per run (default 2000)")
    ap.add_argument("--size", type=int, default=1024, help="message body bytes (smtp-source -l)")
    ap.add_argument("--rows", default="1x1,10x1,50x1,10x10",
                    help="SESSIONSxRECIPIENTS,... (default 1x1,10x1,50x1,10x10)")
    ap.add_argument("--servers", default="qmtwist,postfix")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat every row; ratios use the medians (default 1)")
    ap.add_argument("--warmup", type=int, default=100,
                    help="messages sent and delivered before each measured run (default 100)")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds of rest after sync before each run (default 2)")
    ap.add_argument("--log-devnull", action="store_true",
                    help="send qmtwist's log (twistd stdout) and Postfix's (postlogd) to /dev/null")
    ap.add_argument("--syscalls", action="store_true",
                    help="count every system call per message, by process (implies --strace, "
                         "with every call traced: much slower, only the counts mean anything)")
    ap.add_argument("--strace", action="store_true",
                    help="count fsync/fdatasync/syncfs calls (the servers run under strace -f)")
    ap.add_argument("--pyspy", metavar="DIR",
                    help="record qmtwist (daemon and helpers, GIL holders) with py-spy during "
                         "each run: raw stacks into DIR, a summary on stderr")
    ap.add_argument("--qmtwist-option", action="append", default=[], metavar="OPT",
                    help="one more option for twistd qmtwist, repeatable; e.g. "
                         "--qmtwist-option=--listener-processes=1")
    ap.add_argument("--probe", action="store_true",
                    help="one more client beside smtp-source times every SMTP step "
                         "(bench/step_latency.py); its messages add to the load")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument("--dir", default=None, help="parent of the temp dir (default $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, queues)")
    ap.add_argument("--src", metavar="DIR",
                    help="run qmtwist from this tree instead of the checkout, e.g. a commit "
                         "exported with: git archive COMMIT | tar -x -C DIR")
    args = ap.parse_args()
    global SRC, TRACE_ALL
    if args.syscalls:
        TRACE_ALL = args.strace = True
    if args.src:
        SRC = os.path.abspath(args.src)
        if not os.path.isfile(os.path.join(SRC, "qmtwist", "plugin.py")):
            raise SystemExit(f"{SRC} holds no qmtwist tree")
    sys.path.insert(0, SRC)
    rows = parseRows(args.rows)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if os.getuid() != 0:
        raise SystemExit("smtp_bench needs root (system users, Postfix, per-uid delivery)")
    for tool, package in ((SOURCE, "postfix"), (shutil.which("postfix") or "/usr/sbin/postfix",
                                                "postfix")):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} missing: apt-get install {package}")
    if args.strace and not shutil.which("strace"):
        raise SystemExit("strace missing: apt-get install strace")
    if args.pyspy:
        os.makedirs(args.pyspy, exist_ok=True)
        args.pyspy = os.path.abspath(args.pyspy)

    gitBefore = gitState()
    base = tempfile.mkdtemp(prefix="smtp-bench-", dir=args.dir)
    os.chmod(base, 0o755)
    args.base = base
    trash = os.path.join(base, "trash")
    os.mkdir(trash)

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    users = BenchUsers(base)
    made: list[Server] = []
    results: list[dict[str, Any]] = []
    disk = DiskStats(base)
    try:
        users.setUp()
        maxRecipients = max(args.count, args.warmup) * max(r for _s, r in rows)
        classes = {"qmtwist": Qmtwist, "postfix": Postfix}
        instances = {}
        for name in servers:
            instances[name] = classes[name](base, users, maxRecipients, args.log_devnull,
                                            args.strace)
            made.append(instances[name])
        if "qmtwist" in instances:
            instances["qmtwist"].extra = list(args.qmtwist_option)
        for rnd in range(args.rounds):
            for sessions, rcpts in rows:
                order = servers if rnd % 2 == 0 else servers[::-1]
                for name in order:
                    log(f"round {rnd + 1}: {rowName(sessions, rcpts)}, {name} ...")
                    r = measure(instances[name], users, disk, args, sessions, rcpts, trash,
                                args.pyspy)
                    r["round"] = rnd + 1
                    results.append(r)
                    log(f"  accepted {r['accepted_per_s']} msg/s, delivered "
                        f"{r['delivered_per_s']} msg/s, cpu {r['cpu_ms_per_msg']} ms/msg")
                    settle(users, trash, 0)
    finally:
        for server in made:
            try:
                server.stop()
            except Exception as e:  # keep cleaning up
                log(f"stopping {server.name}: {e}")
        try:
            users.clear(trash)
        except Exception:
            pass
        users.tearDown()
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    doc = {
        "bench": "smtp_bench", "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "git": gitBefore if gitState() == gitBefore else
        f"{gitBefore} (changed to {gitState()} during the run)",
        "host": {"cores": os.cpu_count(), "kernel": platform.release(),
                 "python": platform.python_version()},
        "postfix": subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                                  text=True).stdout.strip(),
        "settings": {"count": args.count, "size": args.size, "rows": rows,
                     "rounds": args.rounds, "warmup": args.warmup, "settle": args.settle,
                     "log_devnull": args.log_devnull, "strace": args.strace,
                     "smtp_concurrency": SMTP_CONCURRENCY,
                     "qmtwist_options": args.qmtwist_option},
        "disk_device": disk.device, "disk_field": disk.field,
        "cpu_counted": "user and system time of the server's process tree: qmtwist = twistd "
                       "and its children (per-uid local helpers); postfix = master and every "
                       "descendant (smtpd, cleanup, trivial-rewrite, qmgr, local, ...), exited "
                       "ones through their parent's cutime/cstime; smtp-source not counted",
        "runs": results, "summary": summarize(results, rows),
    }
    if args.json:
        json.dump(doc, sys.stdout, indent=1)
        print()
    else:
        printTable(doc)


if __name__ == "__main__":
    main()
