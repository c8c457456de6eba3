"""
Which envelope senders an authenticated user may use (docs/behaviour/submission.md 16.3);
blocking (file reads, user lookups): run it on a thread.

An address is the user's when local delivery would give it to that user: its domain is local
(C{locals}, or C{virtualdomains} with its prefix), and the local part, as local delivery looks it
up (C{users/assign}, the system users when running as root: L{qmtwist.users.lookup.UserTable}),
belongs to the user's name, extensions included (C{alice-lists@...}). The alias user's catch-all
does not make an address anybody's. Besides those, C{HOME/users/senders} lists more, one a line:
C{NAME:address} (that address) or C{NAME:@domain} (any address at that domain); C{#} starts a
comment. The null sender C{<>} is allowed (bounces and receipts from the user's client).
"""

from __future__ import annotations

import os

from qmtwist.address import splitAddress
from qmtwist.control import Control
from qmtwist.errors import TemporaryFailure
from qmtwist.home import Home
from qmtwist.queue.preprocess import resolveRecipient
from qmtwist.users.lookup import UserTable


def parseSenders(data: bytes) -> list[tuple[bytes, bytes]]:
    """C{users/senders} as (name, lowered address or C{@domain}) pairs; bad lines are skipped."""
    out = []
    for raw in data.split(b"\n"):
        line = raw.strip()
        if not line or line.startswith(b"#") or b":" not in line:
            continue
        name, entry = line.split(b":", 1)
        name, entry = name.strip(), entry.strip().lower()
        if name and entry:
            out.append((name, entry))
    return out


def listed(entries: list[tuple[bytes, bytes]], user: bytes, address: bytes) -> bool:
    """Whether C{users/senders} gives C{address} to C{user}."""
    lowered = address.lower()
    _, domain = splitAddress(lowered)
    for name, entry in entries:
        if name != user:
            continue
        if entry == lowered or (entry.startswith(b"@") and domain and entry[1:] == domain):
            return True
    return False


class SenderCheck:
    """
    See the module docstring.

    @param home: the qmtwist home (C{users/senders}, C{users/assign}, C{alias/}).
    @param table: the local-part lookup (shared, it caches C{users/assign}).
    """

    def __init__(self, home: Home, table: UserTable | None = None) -> None:
        self.home = home
        self.table = table if table is not None else UserTable(home)

    def readSenders(self) -> list[tuple[bytes, bytes]]:
        """C{users/senders}, read each time (missing = no entries)."""
        try:
            with open(os.path.join(self.home.users, "senders"), "rb") as f:
                return parseSenders(f.read())
        except FileNotFoundError:
            return []

    def owns(self, control: Control, user: bytes, address: bytes) -> bool:
        """
        Whether C{user} may send as C{address}; blocking.

        @raise TemporaryFailure: a lookup failed (the caller answers 451).
        """
        if address == b"":
            return True
        if listed(self.readSenders(), user, address):
            return True
        channel, rewritten = resolveRecipient(control, address)
        if channel != "local":
            return False
        local, _ = splitAddress(rewritten)
        try:
            found = self.table.find(local)
        except TemporaryFailure:
            if self.table.assignTable().find(local) is None:
                return False  # no line for it and only the alias user is missing
            raise
        return not found.isAlias and found.name == user
