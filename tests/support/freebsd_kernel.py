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

import threading
import time
from typing import List, Optional

from .guestbridge import GuestBridge
from .toolstack import Dom0Client, XenStoreRefused

#: xctrl_shutdown_reasons: request -> what the handler does.
REASONS = {"poweroff": "poweroff", "reboot": "reboot", "suspend": "suspend", "crash": "crash",
           "halt": "poweroff"}


class FreeBSDControl:
    """xctrl_on_watch_event on the guest's ring (the bridge socket is the kernel's connection)."""

    def __init__(self, bridge: GuestBridge) -> None:
        self.client = Dom0Client(bridge.socket_path)
        self.acknowledged: List[str] = []
        self._taken: List[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "FreeBSDControl":
        self.client.watch("control/shutdown", "xctrl")
        self._thread = threading.Thread(target=self._run, name="freebsd-xctrl", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.client.close()

    def taken(self) -> List[str]:
        with self._lock:
            return list(self._taken)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.client.wait_event(0.05) is not None:
                    self._on_watch_event()
            except (OSError, ValueError):
                if self._stop.is_set():
                    return
                time.sleep(0.05)

    def _on_watch_event(self) -> None:
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
                self._taken.append(REASONS[value])
