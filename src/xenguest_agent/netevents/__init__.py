"""Network change events: Linux rtnetlink and the FreeBSD routing socket.

:mod:`.rtnetlink` and :mod:`.routesock` read their kernel's messages;
:mod:`.source` coalesces them into NET / RESYNC for the daemon's loop.
"""


from __future__ import annotations

from xenguest_agent.netevents.rtnetlink import NET, RESYNC
from xenguest_agent.netevents.source import (
    Coalescer,
    NetworkEvents,
    select_event_source,
)

__all__ = ["NET", "RESYNC", "Coalescer", "NetworkEvents", "select_event_source"]
