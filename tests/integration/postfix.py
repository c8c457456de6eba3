"""
A private Postfix instance for tests that need a real Postfix peer (Debian package postfix): its
configuration, queue and data directories live in a temp dir, smtpd listens on 127.0.0.1 on a
free port, and the system's /etc/postfix is only read (postfix-files, dynamicmaps.cf), as
bench/smtp_bench.py does. Needs root (Postfix's master runs as root and drops to the postfix
user); its log goes to a file (postlogd), which L{PrivatePostfix.log} reads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from tests.support import freePort, waitFor

SERVICES = """\
{smtp} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


def available() -> bool:
    """Postfix is installed and we are root (its master needs it)."""
    return os.getuid() == 0 and shutil.which("postfix", path="/usr/sbin:/usr/bin") is not None


class PrivatePostfix:
    """
    One Postfix in C{base} with the main.cf C{settings} on top of a minimal loopback setup.

    @ivar port: smtpd's port on 127.0.0.1.
    """

    def __init__(self, base: str, settings: dict[str, str]) -> None:
        self.base = base
        self.conf, self.queue, self.data = (os.path.join(base, d) for d in ("conf", "queue", "data"))
        for d in (self.conf, self.queue, self.data):
            os.makedirs(d, 0o755)
        shutil.chown(self.data, "postfix")
        for name in ("dynamicmaps.cf", "postfix-files", "post-install", "postfix-script"):
            if os.path.exists(os.path.join("/etc/postfix", name)):
                shutil.copy(os.path.join("/etc/postfix", name), self.conf)
        for name in ("postfix-files.d", "dynamicmaps.cf.d"):
            if os.path.isdir(os.path.join("/etc/postfix", name)):
                shutil.copytree(os.path.join("/etc/postfix", name), os.path.join(self.conf, name))
        self.port = freePort()
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(SERVICES.format(smtp=f"127.0.0.1:{self.port}"))
        with open(os.path.join(self.conf, "main.cf"), "w"):
            pass
        self.logPath = os.path.join(base, "postfix.log")
        base_settings = {
            "compatibility_level": "3.6", "queue_directory": self.queue,
            "data_directory": self.data, "meta_directory": self.conf,
            "myhostname": "postfix.example", "mydomain": "postfix.example",
            "myorigin": "postfix.example", "mydestination": "", "mynetworks": "127.0.0.0/8",
            "inet_interfaces": "127.0.0.1", "inet_protocols": "ipv4", "alias_maps": "",
            "alias_database": "", "biff": "no", "append_dot_mydomain": "no",
            "smtp_dns_support_level": "disabled", "maillog_file": self.logPath,
            "maillog_file_prefixes": base,
        }
        base_settings.update(settings)
        subprocess.run(["postconf", "-c", self.conf, "-e",
                        *[f"{k}={v}" for k, v in base_settings.items()]], check=True)
        subprocess.run(["postfix", "-c", self.conf, "set-permissions", "create-missing"],
                       check=False, capture_output=True)

    def start(self) -> None:
        r = subprocess.run(["postfix", "-c", self.conf, "start"], capture_output=True)
        assert r.returncode == 0, r.stdout + r.stderr

        def listening() -> bool:
            import socket
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        waitFor(listening, "the private Postfix listening", deadline=60, context=self.log)

    def log(self) -> str:
        try:
            with open(self.logPath, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", self.conf, "stop"], capture_output=True)
        pidFile = os.path.join(self.queue, "pid", "master.pid")
        end = time.monotonic() + 30
        while os.path.exists(pidFile) and time.monotonic() < end:
            time.sleep(0.1)
        if os.path.exists(pidFile):
            subprocess.run(["postfix", "-c", self.conf, "abort"], capture_output=True)
