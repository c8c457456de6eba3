"""qmtwist check (docs/behaviour/operations.md 6)."""

from __future__ import annotations

import os

from qmtwist.home import Home


def readMe(home: Home) -> str | None:
    """C{control/me} of an existing home, or L{None} when there is none yet."""
    try:
        with open(os.path.join(home.control, "me"), "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return None
