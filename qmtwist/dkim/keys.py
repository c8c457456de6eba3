"""
DKIM private keys under C{control/dkim/} (docs/behaviour/dkim.md 18.3).

One file per key: C{control/dkim/⟨domain⟩/⟨selector⟩.key}, a PEM private key (RSA as PKCS#1,
the form dkimpy reads; Ed25519 as PKCS#8), mode 0600 in directories of mode 0700, owned by the
owner of C{control/} (the user the daemon runs as: root for a root daemon). The key type is
read from the file, so a key made elsewhere (C{openssl genrsa}) can be dropped in.

Domain and selector names are checked (L{validName}) before they become part of a path; the
signing side never builds a path from a name in a message: it lists C{control/dkim/} and matches
the names it found (L{keysFor}).
"""

from __future__ import annotations

import base64
import os
import re

from attrs import frozen
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

SUBDIR = "dkim"
TYPES = ("rsa", "ed25519")
RSA_BITS = 2048
DEFAULT_SELECTOR = "qmtwist"
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
#: one string of a TXT record holds at most 255 bytes (RFC 1035 3.3.14)
TXT_STRING = 255


class DKIMKeyError(Exception):
    """A key that cannot be made, read or used; C{text} is the reason for the operator."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@frozen
class Key:
    """
    One private key.

    @ivar domain: the signing domain (C{d=}), lowercase.
    @ivar selector: the selector (C{s=}).
    @ivar type: C{"rsa"} or C{"ed25519"}.
    @ivar signing: what dkimpy's signer takes: PKCS#1 PEM (rsa) or the base64 seed (ed25519).
    @ivar public: the base64 public key of the DNS record's C{p=}.
    """

    domain: str
    selector: str
    type: str
    signing: bytes
    public: str

    @property
    def algorithm(self) -> bytes:
        return b"rsa-sha256" if self.type == "rsa" else b"ed25519-sha256"

    @property
    def txt(self) -> str:
        """The TXT record's text, C{v=DKIM1; k=...; p=...}."""
        return f"v=DKIM1; k={self.type}; p={self.public}"

    @property
    def record(self) -> str:
        """The zone file line to publish (strings of at most 255 bytes, RFC 1035 3.3.14)."""
        text = self.txt
        parts = [text[i:i + TXT_STRING] for i in range(0, len(text), TXT_STRING)]
        quoted = " ".join(f'"{p}"' for p in parts)
        return f"{self.selector}._domainkey.{self.domain}. IN TXT {quoted}"


def validName(name: str) -> bool:
    """A domain or selector we accept: lowercase LDH labels (and C{_}), at most 253 bytes."""
    if not name or len(name) > 253:
        return False
    return all(_LABEL.match(label) for label in name.split("."))


def keyDir(controlDir: str) -> str:
    return os.path.join(controlDir, SUBDIR)


def parseKey(domain: str, selector: str, pem: bytes) -> Key:
    """A L{Key} from a PEM private key. @raise DKIMKeyError: not an RSA or Ed25519 key."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise DKIMKeyError(f"not a PEM private key without password ({e})") from e
    if isinstance(key, rsa.RSAPrivateKey):
        signing = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        return Key(domain, selector, "rsa", signing, base64.b64encode(public).decode())
    if isinstance(key, ed25519.Ed25519PrivateKey):
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        return Key(domain, selector, "ed25519", base64.b64encode(seed),
                   base64.b64encode(raw).decode())
    raise DKIMKeyError(f"unsupported key type {type(key).__name__} (rsa or ed25519 only)")


def _keyFiles(controlDir: str, domain: str) -> list[tuple[str, str]]:
    """C{(selector, path)} of the key files of C{domain} (a name found by listing)."""
    d = os.path.join(keyDir(controlDir), domain)
    try:
        names = sorted(os.listdir(d))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [(n[:-4], os.path.join(d, n)) for n in names
            if n.endswith(".key") and validName(n[:-4])]


#: parsed keys by path, with the (inode, size, mtime) they were read at: loading a PEM RSA key
#: checks it, which costs far more than a signature, so each file is parsed once per change
_parsed: dict[str, tuple[tuple[int, int, int], Key]] = {}


def _load(domain: str, selector: str, path: str) -> Key:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            cached = _parsed.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            pem = f.read(65536)
    except OSError as e:
        raise DKIMKeyError(f"unable to read {path}: {e.strerror}") from e
    try:
        key = parseKey(domain, selector, pem)
    except DKIMKeyError as e:
        raise DKIMKeyError(f"{path}: {e.text}") from e
    _parsed[path] = (stamp, key)
    return key


def domains(controlDir: str) -> list[str]:
    """The domains that have a directory under C{control/dkim/} (valid names only)."""
    try:
        names = os.listdir(keyDir(controlDir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if validName(n))


def listKeys(controlDir: str) -> list[Key]:
    """Every key, by domain then selector. @raise DKIMKeyError: a key file is unreadable."""
    return [_load(dom, sel, path) for dom in domains(controlDir)
            for sel, path in _keyFiles(controlDir, dom)]


def keysFor(controlDir: str, candidates: list[str]) -> list[Key]:
    """
    The keys of the first of C{candidates} (a From: domain, then its parents) that has any.
    A candidate is compared with the names listed in C{control/dkim/}, never joined to a path.
    Blocking: run on a thread.

    @raise DKIMKeyError: a key file of the chosen domain cannot be read or used.
    """
    present = set(domains(controlDir))
    for name in candidates:
        if name in present:
            files = _keyFiles(controlDir, name)
            if files:
                return [_load(name, sel, path) for sel, path in files]
    return []


def candidates(domain: str) -> list[str]:
    """C{mail.example.com} -> C{[mail.example.com, example.com, com]}, lowercased."""
    labels = domain.lower().rstrip(".").split(".")
    return [".".join(labels[i:]) for i in range(len(labels)) if labels[i]]


def generate(type: str) -> bytes:
    """A new private key as PEM (rsa: 2048-bit PKCS#1; ed25519: PKCS#8)."""
    if type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption())
    if type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())
    raise DKIMKeyError(f"unknown key type {type} (rsa or ed25519)")


def keygen(controlDir: str, domain: str, selector: str = DEFAULT_SELECTOR,
           type: str = "rsa") -> Key:
    """
    Make a key for C{domain} and write it durably as C{control/dkim/DOMAIN/SELECTOR.key}
    (0600, directories 0700, owned by the owner of C{control/}). An existing key of that
    selector is never replaced: a domain's rsa and ed25519 keys need different selectors,
    since each selector names one DNS record.

    @raise DKIMKeyError: a bad name, a selector already in use, or a write failure.
    """
    domain = domain.lower().rstrip(".")
    if not validName(domain) or "." not in domain:
        raise DKIMKeyError(f"bad domain name {domain!r}")
    if not validName(selector):
        raise DKIMKeyError(f"bad selector {selector!r}")
    st = os.stat(controlDir)
    for sel, path in _keyFiles(controlDir, domain):
        if sel == selector:
            raise DKIMKeyError(f"{path} already exists; choose another selector with --selector")
    pem = generate(type)
    key = parseKey(domain, selector, pem)
    top = keyDir(controlDir)
    sub = os.path.join(top, domain)
    for d in (top, sub):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        _own(d, st)
    path = os.path.join(sub, selector + ".key")
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    _own(tmp, st)
    os.link(tmp, path)  # fails rather than replacing a key written meanwhile
    os.unlink(tmp)
    dfd = os.open(sub, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return key


def _own(path: str, st: os.stat_result) -> None:
    """As root, give C{path} to the owner of C{control/} (the daemon's user)."""
    if os.getuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
        os.chown(path, st.st_uid, st.st_gid)
