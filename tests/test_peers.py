"""
Every peer program and module a test talks to is installed.

Each row names the Debian package that `.ci/run` installs for it. In CI (CI=true) a missing peer
is a failure, by the hook in conftest.py; elsewhere the test skips and names the package to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

# program -> Debian package (by name in .ci/run)
PROGRAMS = {
    "swaks": "swaks",
    "tcpserver": "ucspi-tcp",
    "fetchmail": "fetchmail",
    "getmail": "getmail6",
    "procmail": "procmail",
    "mutt": "mutt",
    "s-nail": "s-nail",
    "bsd-mailx": "bsd-mailx",
    "smtp-sink": "postfix",
    "postfix": "postfix",  # a private instance for the SMTPUTF8 peer tests (tests/integration/postfix.py)
    "setpriv": "util-linux",
    "useradd": "passwd",
    "groupadd": "passwd",  # group qmtwistq of the mailq test (docs/behaviour/queue-control.md)
    "ip": "iproute2",  # adds interface addresses for the remote self-check test
    "systemd-socket-activate": "systemd",  # socket activation with named descriptors
    "systemd-analyze": "systemd",  # checks contrib/systemd's units
}

# Perl modules swaks --tls needs; swaks only Recommends them, so --no-install-recommends skips them.
PERL_MODULES = {
    "Net::SSLeay": "libnet-ssleay-perl",
    "IO::Socket::SSL": "libio-socket-ssl-perl",
}


def _find(program: str) -> str | None:
    return shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_peerProgramInstalled(program):
    if _find(program) is None:
        pytest.skip(f"{program} is missing: install the Debian package {PROGRAMS[program]}")
    assert os.access(_find(program), os.X_OK)


@pytest.mark.parametrize("module", sorted(PERL_MODULES))
def test_perlModuleInstalled(module):
    if shutil.which("perl") is None:
        pytest.skip("perl is missing")
    r = subprocess.run(["perl", f"-M{module}", "-e", "1"], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"perl module {module} is missing: install the Debian package {PERL_MODULES[module]}")
    assert r.returncode == 0


def test_swaksHasTLS():
    """swaks itself reports STARTTLS support (what test_swaks_tls needs)."""
    if _find("swaks") is None:
        pytest.skip("swaks is missing: install the Debian package swaks")
    r = subprocess.run(["swaks", "--support"], capture_output=True, text=True)
    out = r.stdout + r.stderr
    if "=== TLS supported" not in out:
        pytest.skip("swaks has no TLS (install libnet-ssleay-perl and libio-socket-ssl-perl): "
                    + " ".join(line for line in out.splitlines() if "TLS" in line))
    assert r.returncode == 0
