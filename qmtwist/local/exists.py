"""
Whether local delivery would bounce a recipient with "Sorry, no mailbox here by that name",
asked before the message exists: the SMTP server's recipient check at RCPT
(docs/behaviour/smtp-extensions.md 20.5).

The answer comes from the same steps a delivery takes, in the same order, with the same code:
L{qmtwist.queue.preprocess.resolveRecipient} on the queue's control snapshot (locals,
virtualdomains, percenthack, envnoathost) decides whether the address is local at all and
rewrites a virtual domain's address to its prefix; the local part (before the last C{@}) goes to
L{qmtwist.users.UserTable.find} (users/assign, system users when running as root, the alias
user); the home directory checks of L{qmtwist.local.dotqmail.checkHome}; then the C{.qmail}
names of L{qmtwist.local.dotqmail.candidates} (the extension file, its C{-default} chain),
each through L{qmtwist.local.dotqmail.safeName}, so a hostile or UTF-8 local part reaches the
file system only as a checked name inside the home directory.

Only a definite "no such file" chain is a refusal. Anything delivery would defer (a missing
alias user, a home that cannot be searched, an error other than "not found") counts as a
mailbox, so a temporary problem never turns into a 550. The files are only looked at with
C{stat}, never opened, so nothing of the user's runs and no device is opened, even as root.

Everything here is synchronous: L{MailboxCheck.check} runs it on the daemon's thread pool.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from qmtwist.address import splitAddress
from qmtwist.control import Control
from qmtwist.errors import MailError
from qmtwist.local.dotqmail import candidates, checkHome, safeName
from qmtwist.queue.preprocess import resolveRecipient
from qmtwist.users.lookup import UserTable

log = Logger(namespace="qmtwist.smtp")


def _present(home: str, name: bytes) -> bool:
    """Whether the candidate C{home/name} is a regular file, as L{qmtwist.local.dotqmail.locate}
    would find it; an error other than "not found" counts as present (delivery would defer)."""
    try:
        st = os.stat(os.path.join(os.fsencode(home), name))
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return stat.S_ISREG(st.st_mode)


def hasMailbox(users: UserTable, control: Control, address: bytes) -> bool:
    """
    Whether delivery of C{address} could succeed, i.e. would not fail with
    C{Sorry, no mailbox here by that name. (#5.1.1)}; synchronous.

    @param users: the lookup table local delivery uses.
    @param control: the queue's control snapshot (what preprocessing will use).
    """
    channel, address = resolveRecipient(control, address)
    if channel != "local":
        return True  # remote: qmail-send would not look at local users at all
    local, _ = splitAddress(address)
    if not local:
        return True  # an empty local part is delivered as did 0+0+0
    try:
        user = users.find(local)
        if not user.dash:
            return True  # the user's own .qmail, else defaultdelivery
        checkHome(user.home)
    except MailError:
        return True  # delivery would defer, not bounce
    for name, _default in candidates(user.dash, user.ext):
        if safeName(name) and _present(user.home, name):
            return True
    return False


class MailboxCheck:
    """
    The recipient check of one daemon: L{hasMailbox} on a thread, with the daemon's queue
    snapshot of the controls.

    @param home: the qmtwist home (users/assign, alias/).
    @param controls: the daemon's L{qmtwist.context.ControlCache}; its C{snapshot} is what
        the queue preprocesses with.
    @param runInThread: the daemon's thread hop.
    @param root: whether system users are consulted; default: whether we run as uid 0, as
        L{qmtwist.local.agent.LocalAgent} decides.
    """

    def __init__(self, home: Any, controls: Any,
                 runInThread: Callable[[Callable[[], Any]], Deferred[Any]],
                 root: bool | None = None) -> None:
        self.users = UserTable(home, root)
        self.controls = controls
        self.runInThread = runInThread

    def check(self, address: bytes) -> Deferred[bool]:
        """Fires with L{hasMailbox}'s answer; an unexpected error is logged and gives C{True}."""
        control = self.controls.snapshot
        d = self.runInThread(lambda: hasMailbox(self.users, control, address))

        def failed(f: Any) -> bool:
            log.failure("recipient check failed", f)
            return True

        d.addErrback(failed)
        return d
