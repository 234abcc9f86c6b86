"""FreeBSD's kernel side of ``control/shutdown``, as a client of a guest domain's ring.

freebsd/freebsd-src sys/dev/xen/control/control.c (main; releng/14): ``xctrl_attach`` watches
``control/shutdown`` on the kernel's own XenStore connection; ``xctrl_on_watch_event`` reads the
value outside any transaction, **acknowledges it by writing "" before looking it up** (a failed
write is only printed), then runs the first matching entry of ``xctrl_shutdown_reasons``:
"poweroff" and "halt" both ``xctrl_poweroff`` (``shutdown_nice(RB_POWEROFF|RB_HALT)``),
"reboot", "suspend", "crash". An unknown value is therefore acknowledged too, and then ignored.
It writes no ``control/feature-*`` key.

One assumption, stated: an empty value is ignored. The kernel's own "" write fires its watch
again, so a kernel that acknowledged an empty read would rewrite "" forever; the versions read
for this model differ on that check, and a guest that spun would have been noticed.

support.toolstack.GuestKernel("freebsd") acknowledges only the values it handles (the Linux
rule); this model is the FreeBSD one. ``taken()`` lists what the kernel carried out, with "halt"
recorded as the "poweroff" it performs.
"""

from __future__ import annotations

from typing import List

from .guestbridge import GuestBridge
from .toolstack import ShutdownWatcher, XenStoreRefused

#: xctrl_shutdown_reasons: request -> what the handler does.
REASONS = {"poweroff": "poweroff", "reboot": "reboot", "suspend": "suspend", "crash": "crash",
           "halt": "poweroff"}


class FreeBSDControl(ShutdownWatcher):
    """xctrl_on_watch_event on the guest's ring; ``acknowledged`` lists every value it wrote
    "" over, ``taken()`` what it carried out."""

    def __init__(self, bridge: GuestBridge) -> None:
        super().__init__(bridge, "freebsd-xctrl")
        self.acknowledged: List[str] = []

    def start(self) -> "FreeBSDControl":
        self._watch("xctrl")
        return self

    def _handle(self) -> None:
        try:
            value = self.client.read("control/shutdown")
        except XenStoreRefused:
            return  # "if (error != 0) return;"
        if not value:
            return  # the stated assumption (module docstring)
        try:
            self.client.write("control/shutdown", "")
        except XenStoreRefused:
            pass  # "unable to ack shutdown request, proceeding anyway"
        with self._lock:
            self.acknowledged.append(value)
        if value in REASONS:
            self._carried_out(REASONS[value])
