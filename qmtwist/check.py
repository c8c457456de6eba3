"""
C{qmtwist check} (docs/behaviour/operations.md 21.6): what C{postfix check} is to Postfix. It looks
at a home as the daemon would use it and prints one line per problem; silent with exit 0 when
everything is right, exit 1 when anything is not (111 when the home cannot be read at all).

The checks, each a function returning its problem lines: L{ownershipProblems} (owner and modes
of the home's directories and secret files), L{controlProblems} (control files and rules files
that do not parse, with the daemon's own parsers and texts), L{certificateProblems}
(C{servercert.pem} whose key is not its certificate's, L{qmtwist.tls}), L{userProblems}
(C{users/assign} lines whose home directory is missing) and L{dkimProblems} (keys under
C{control/dkim/} whose DNS record is missing or different, only where DNS answers).

This is a command, not the daemon: it reads files directly; only its DNS queries run on a
reactor (twisted.names, the resolver of C{--dns} or resolv.conf).
"""

from __future__ import annotations

import argparse
import base64
import os
import stat
import sys
from typing import Any, Callable

from twisted.internet.defer import Deferred, gatherResults

from qmtwist.home import Home, chooseHome
from qmtwist.programs import PROGRAMS

#: the home's directories, by path below the home, that only its owner may write
DIRECTORIES = ("", "control", "users", "rules", "bin", "run", "queue")
#: files that hold secrets: not readable by others (and users/passwd not by the group either)
SECRETS = {"users/passwd": 0o077, "control/servercert.pem": 0o007}
DKIM_DIR = "dkim"
DNS_TIMEOUT = (1, 3, 5)


def readMe(home: Home) -> str | None:
    """C{control/me} of an existing home, or L{None} when there is none yet."""
    try:
        with open(os.path.join(home.control, "me"), "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return None


def _mode(st: os.stat_result) -> str:
    return oct(stat.S_IMODE(st.st_mode))[2:].zfill(4)


def ownershipProblems(home: Home) -> list[str]:
    """
    Directories of the home that are missing, not owned by the home's owner (the user the
    daemon runs as) or writable by group or others; secret files readable by others; queue
    directories missing; programs of C{bin/} missing or not executable.
    """
    out: list[str] = []
    owner = os.stat(home.path).st_uid
    from qmtwist.queue.layout import FLAT_DIRS, SPLIT, SPLIT_DIRS

    queueDirs = [f"queue/{d}" for d in FLAT_DIRS]
    queueDirs += [f"queue/{d}/{i}" for d in SPLIT_DIRS for i in ("",) + tuple(range(SPLIT))]
    for rel in DIRECTORIES + tuple(queueDirs):
        rel = rel.rstrip("/")
        path = home.sub(rel) if rel else home.path
        shown = rel or "the home"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            out.append(f"{shown}: missing (qmtwist setup creates it)")
            continue
        if not stat.S_ISDIR(st.st_mode):
            out.append(f"{shown}: not a directory")
            continue
        if st.st_uid != owner:
            out.append(f"{shown}: owned by uid {st.st_uid}, not by the home's owner uid {owner}")
        if st.st_mode & 0o022:
            out.append(f"{shown}: mode {_mode(st)} lets group or others write; use chmod go-w")
    for rel, forbidden in SECRETS.items():
        try:
            st = os.stat(home.sub(rel))
        except FileNotFoundError:
            continue
        if st.st_mode & forbidden:
            out.append(f"{rel}: mode {_mode(st)} lets {'group or ' if forbidden & 0o070 else ''}"
                       f"others read it; use chmod {'go' if forbidden & 0o070 else 'o'}-rwx")
        if st.st_uid != owner:
            out.append(f"{rel}: owned by uid {st.st_uid}, not by the home's owner uid {owner}")
    for name in sorted(PROGRAMS):
        path = home.sub("bin", name)
        if not os.path.exists(path):
            out.append(f"bin/{name}: missing (qmtwist setup writes it)")
        elif not os.access(path, os.X_OK):
            out.append(f"bin/{name}: not executable")
    return out


def controlProblems(home: Home) -> list[str]:
    """Control files and rules files that do not parse, in the daemon's own words."""
    from qmtwist.control import load
    from qmtwist.errors import ControlError
    from qmtwist.tcprules import RulesFile

    try:
        _, warnings = load(home.control)
    except ControlError as e:
        return [str(e)]
    out = list(warnings)
    for name in ("smtp", "qmtp", "pop3"):
        out.extend(RulesFile(os.path.join(home.rules, name), name).reload())
    return out


def certificateProblems(home: Home) -> list[str]:
    """C{control/servercert.pem} that cannot serve TLS (absent is fine: no STARTTLS)."""
    from qmtwist.control import NotRegularFile
    from qmtwist.tls import KeyMismatch, loadServerOptions

    path = os.path.join(home.control, "servercert.pem")
    if not os.path.lexists(path):
        return []
    try:
        loadServerOptions(path)
    except KeyMismatch as e:
        return [f"control/servercert.pem: {e}"]
    except NotRegularFile:
        return ["control/servercert.pem: not a regular file"]
    except OSError as e:
        return [f"control/servercert.pem: unable to read: {e.strerror}"]
    except Exception as e:
        return [f"control/servercert.pem: not a usable key and certificate ({e})"]
    return []


def userProblems(home: Home) -> list[str]:
    """Users of C{users/assign} whose home directory is missing (their mail would defer)."""
    from qmtwist.users.lookup import parseAssign

    try:
        with open(os.path.join(home.users, "assign"), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    except OSError as e:
        return [f"users/assign: unable to read: {e.strerror}"]
    out: list[str] = []
    table = parseAssign(data, out.append)
    seen: set[str] = set()
    for a in list(table.exact.values()) + list(table.prefixes):
        if a.home in seen:
            continue
        seen.add(a.home)
        if not os.path.isdir(a.home):
            out.append(f"user {a.name.decode('utf-8', 'replace')}: home directory {a.home} is "
                       "missing")
    return out


# -- DKIM: keys as control/dkim/DOMAIN/SELECTOR.key (qmtwist dkim keygen) -------------------


def dkimKeys(controlDir: str) -> list[tuple[str, str, str]]:
    """
    C{(domain, selector, path)} of every key file under C{control/dkim/} (none when the
    directory is absent). Kept apart from the signer's own reader on purpose: the check must
    also report a key the signer would refuse.
    """
    top = os.path.join(controlDir, DKIM_DIR)
    try:
        domains = sorted(os.listdir(top))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out: list[tuple[str, str, str]] = []
    for domain in domains:
        try:
            names = sorted(os.listdir(os.path.join(top, domain)))
        except (NotADirectoryError, FileNotFoundError):
            continue
        out.extend((domain, n[:-4], os.path.join(top, domain, n)) for n in names
                   if n.endswith(".key"))
    return out


def publicKey(pem: bytes) -> str:
    """The base64 C{p=} of the DNS record for a PEM private key (RSA or Ed25519)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = serialization.load_pem_private_key(pem, password=None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
    else:
        raw = key.public_key().public_bytes(  # type: ignore[union-attr]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(raw).decode()


def recordProblem(name: str, texts: list[bytes], public: str) -> str | None:
    """What is wrong with the TXT strings of C{name} for a key whose C{p=} is C{public}."""
    records = [t for t in texts if b"p=" in t]
    if not records:
        return f"DKIM key {name}: no DKIM record in DNS (TXT with p=)"
    for record in records:
        tags = {}
        for part in record.decode("ascii", "replace").split(";"):
            k, _, v = part.strip().partition("=")
            tags[k.strip()] = "".join(v.split())
        if tags.get("p") == public:
            return None
    return f"DKIM key {name}: the DNS record's p= is not this key's public key"


def dkimProblems(controlDir: str, resolver: Any,
                 timeout: tuple[int, ...] = DNS_TIMEOUT) -> Deferred[list[str]]:
    """
    Each key under C{control/dkim/} against its TXT record C{SELECTOR._domainkey.DOMAIN}. An
    unreadable key is a problem; a name DNS does not answer for (timeout, SERVFAIL) is not
    checked; NXDOMAIN or no C{p=} record, or a different key, is a problem.
    """
    from twisted.names.error import DNSNameError

    checks: list[Deferred[str | None]] = []
    for domain, selector, path in dkimKeys(controlDir):
        label = f"{selector}._domainkey.{domain}"
        try:
            with open(path, "rb") as f:
                public = publicKey(f.read(65536))
        except Exception as e:
            checks.append(Deferred())
            checks[-1].callback(f"control/dkim/{domain}/{selector}.key: not a usable private key "
                                f"({getattr(e, 'strerror', None) or e})")
            continue

        def answered(result: Any, label: str = label, public: str = public) -> str | None:
            answers = result[0]
            texts = [b"".join(r.payload.data) for r in answers
                     if getattr(r.payload, "data", None) is not None]
            return recordProblem(label, texts, public)

        def failed(f: Any, label: str = label) -> str | None:
            if f.check(DNSNameError):
                return f"DKIM key {label}: no DKIM record in DNS (NXDOMAIN)"
            return None  # DNS did not answer: not checked

        d = resolver.lookupText(label, timeout=timeout)
        checks.append(d.addCallbacks(answered, failed))
    done = gatherResults(checks, consumeErrors=True)
    return done.addCallback(lambda lines: [x for x in lines if x])


# -- the command ------------------------------------------------------------------------------


def problems(home: Home) -> list[str]:
    """Every problem that needs no DNS."""
    out: list[str] = []
    steps: list[Callable[[Home], list[str]]] = [
        ownershipProblems, controlProblems, certificateProblems, userProblems]
    for step in steps:
        out.extend(step(home))
    return out


def checkCommand(home: Home, argv: list[str]) -> int:
    """C{qmtwist check [--dns HOST:PORT] [--no-dns]}: print each problem; 0 only when none."""
    p = argparse.ArgumentParser(prog="qmtwist check",
                                description="Report what is wrong with a qmtwist home.")
    p.add_argument("--home")
    p.add_argument("--dns", action="append", default=[], metavar="HOST:PORT",
                   help="DNS server for the DKIM records (default: resolv.conf)")
    p.add_argument("--no-dns", action="store_true", help="skip the DKIM records' DNS check")
    opts = p.parse_args(argv)
    if opts.home:
        home = chooseHome(opts.home)
    if not os.path.isdir(home.path):
        sys.stdout.write(f"{home.path}: not a qmtwist home (no such directory)\n")
        return 111
    found = problems(home)
    if not opts.no_dns and dkimKeys(home.control):
        found.extend(_runDNS(home, opts.dns))
    for line in found:
        sys.stdout.write(line + "\n")
    return 1 if found else 0


def _runDNS(home: Home, dns: list[str]) -> list[str]:
    """Run the DKIM lookups on a reactor of their own and return their problems."""
    from twisted.internet.task import react

    from qmtwist.remote.mx import makeResolver

    servers = []
    for spec in dns:
        host, _, port = spec.rpartition(":")
        servers.append((host.strip("[]"), int(port)))
    result: list[str] = []

    async def main(r: Any) -> None:
        result.extend(await dkimProblems(home.control, makeResolver(r, servers or None)))

    try:
        react(lambda r: Deferred.fromCoroutine(main(r)))
    except SystemExit:
        pass
    return result
