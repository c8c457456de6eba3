"""
qmail-users and the accounts qmtwist keeps beside it, in three modules:

 - L{qmtwist.users.lookup}: who controls a local part (C{users/assign}, the system password
   file rules, the alias user; docs/behaviour/local.md 3.3-3.5): L{UserTable}, L{UserDatabase};
 - L{qmtwist.users.passwd}: the password store C{users/passwd} (docs/behaviour/pop3.md 10.5) and
   L{PasswdChecker}, its C{twisted.cred} checker;
 - L{qmtwist.users.command}: the C{qmtwist user add|del|list} command (docs/commands.md).

The names below are importable from here as well, as they were before the split.
"""

from qmtwist.users.command import userCommand
from qmtwist.users.lookup import (
    ALIAS_MISSING, LSPAWN_TEMP, NFS_FAILURE, ROOT_REFUSED, AssignTable, Assignment, User,
    UserDatabase, UserTable, findSystemUser, parseAssign)
from qmtwist.users.passwd import PasswdChecker, checkPassword, hashPassword, readPasswd

__all__ = [
    "ALIAS_MISSING", "LSPAWN_TEMP", "NFS_FAILURE", "ROOT_REFUSED", "AssignTable", "Assignment",
    "PasswdChecker", "User", "UserDatabase", "UserTable", "checkPassword", "findSystemUser",
    "hashPassword", "parseAssign", "readPasswd", "userCommand",
]
