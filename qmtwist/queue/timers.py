"""
The queue service's timer heap: when each channel of each message has its next delivery pass
(docs/behaviour/queue.md 5.6).

Pure data, no clock and no files: the service pushes C{(time, message, channel)} whenever a
pass is scheduled, pops what is due when its one wake-up call fires, and arms that call for
L{TimerHeap.nextDue}. An entry can go stale (the message finished, the pass was rescheduled or
SIGALRM made it due at once); the service checks each popped entry against the channel's
C{scheduled} and skips stale ones, so nothing here is ever removed early.
"""

from __future__ import annotations

import heapq
from typing import Iterator


class TimerHeap:
    """A min-heap of C{(due time, message number, channel name)}."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []

    def push(self, when: float, msgId: int, channel: str) -> None:
        """Note that channel C{channel} of message C{msgId} has a pass due at C{when}."""
        heapq.heappush(self._heap, (when, msgId, channel))

    def popDue(self, now: float) -> Iterator[tuple[int, str]]:
        """
        Take out, earliest first, every entry due at C{now} or before, as C{(msgId, channel)}.

        Lazy: each entry is removed only when the caller asks for it, so entries pushed while
        the caller handles one are seen in the same sweep if they are due.
        """
        while self._heap and self._heap[0][0] <= now:
            _, msgId, channel = heapq.heappop(self._heap)
            yield msgId, channel

    def nextDue(self) -> float | None:
        """The earliest due time still in the heap, or L{None} when it is empty."""
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)
