"""Warnings about a recurring condition: the first at once, then at most one per
interval per condition, each saying how many were held back.

A key xenstored keeps refusing, an unreadable node seen on every watch event, a
collector failing each round: one line per occurrence floods the journal, one
line forever hides that the condition persists.  Here the first occurrence is
logged, repeats within ``interval`` are counted, and the next line after it
says "(N more times since)".
"""

from __future__ import annotations

import time
from collections import OrderedDict

from xenguest_agent.log import Logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Hashable, Tuple

#: Default spacing of repeated warnings about one condition, in seconds.
INTERVAL = 600.0
#: Conditions remembered at most (the oldest is forgotten first), so a hostile
#: tree with countless refused names cannot grow the agent's memory.
MAX_CONDITIONS = 1024


class RateLimitedLog:
    def __init__(self, logger: Logger, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._seen: "OrderedDict[Hashable, Tuple[float, int]]" = OrderedDict()

    def warning(self, condition: Hashable, message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``condition`` was logged less than
        ``interval`` ago; True when a line was written."""
        now = self.clock()
        seen = self._seen.get(condition)
        if seen is not None and now - seen[0] < self.interval:
            self._seen[condition] = (seen[0], seen[1] + 1)
            return False
        held = seen[1] if seen is not None else 0
        suffix = f" ({held} more time{'s' if held != 1 else ''} since)" if held else ""
        self.logger.warning(message + suffix, *args)
        self._seen[condition] = (now, 0)
        self._seen.move_to_end(condition)
        while len(self._seen) > MAX_CONDITIONS:
            self._seen.popitem(last=False)
        return True
