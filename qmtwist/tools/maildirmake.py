"""
maildirmake: create a Maildir (docs/behaviour/tools.md 13). Replaces qmail's maildirmake.

C{maildirmake dir} makes dir, dir/tmp, dir/new, dir/cur with mode 0700; it fails (111) if dir
already exists; 100 for usage.
"""

from __future__ import annotations

import os

from qmtwist.tools.base import ProgramEnv


def main(argv: list[str], env: ProgramEnv) -> int:
    if len(argv) != 2 or argv[1] == "--help":
        env.warn("maildirmake: usage: maildirmake name")
        return 100 if argv[1:] != ["--help"] else 0
    name = argv[1]
    old = os.umask(0o077)
    try:
        for path, label in ((name, name), (os.path.join(name, "tmp"), name + "/tmp"),
                            (os.path.join(name, "new"), name + "/new"),
                            (os.path.join(name, "cur"), name + "/cur")):
            try:
                os.mkdir(path, 0o700)
            except OSError as e:
                env.warn(f"maildirmake: fatal: unable to mkdir {label}: {e.strerror}")
                return 111
    finally:
        os.umask(old)
    return 0
