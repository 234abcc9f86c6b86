"""When the idle loop wakes: the memory check, carrying the systemd watchdog ping.

A guest agent is idle almost all its life, so each idle wake-up is a cost paid on every
guest of a pool (docs/performance.md): the memory check and the watchdog ping share one.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional, Tuple


#: How often memory is checked (with a network event source).  The systemd
#: watchdog ping rides on the same wake-up: two wake-ups a minute while idle.
MEMORY_CHECK = 30.0


def ping_window(ping: float) -> Tuple[float, float]:
    """(earliest, latest) delay after a ping for the next one, given the notifier's
    interval (half of WATCHDOG_USEC): like systemd's own event loop (systemd
    src/libsystemd/sd-event/sd-event.c, ``arm_watchdog``: between 1/2 and 3/4 of the
    period, at a time that coalesces with other wake-ups; ``process_watchdog``: never
    sooner than 1/4 of it).  With WatchdogSec=45s in systemd/xenguest-agent.service:
    11.25 s and 33.75 s."""
    return ping / 2, ping * 1.5


def tick_interval(ping: Optional[float]) -> float:
    """The memory check's period: ``MEMORY_CHECK``, or less when the watchdog needs a
    ping sooner, so that each check's wake-up carries the ping."""
    return MEMORY_CHECK if ping is None else min(MEMORY_CHECK, ping_window(ping)[1])
