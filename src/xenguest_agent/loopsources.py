"""Everything the daemon's loop waits on, in one poll(): the wakeup pipe and the
kernel's event sockets and files.

The daemon asks :meth:`LoopSources.wait` to sleep until a deadline and gets back
the collectors whose facts may have changed.  Each source is optional: where
the OS offers none, the daemon polls (network) or relies on its sweep (files).

* :class:`~xenguest_agent.wakeup.Wakeup`: signals (``signal.set_wakeup_fd``),
  the watch connection's thread, finished hook jobs;
* :class:`~xenguest_agent.netevents.NetworkEvents`: rtnetlink or the FreeBSD
  routing socket, coalesced (``read_ready`` is called on every wake-up and at
  its own deadline, since a coalescing window may close with the socket quiet);
* :class:`~xenguest_agent.filewatch.FileWatch`: dnotify/kqueue on os-release,
  resolv.conf and the host name (``/proc/sys/kernel/hostname`` reports a change
  as POLLPRI, kernel/utsname_sysctl.c ``uts_proc_notify``).
"""

from __future__ import annotations

import select

from xenguest_agent.filewatch import FileWatch
from xenguest_agent.log import get_logger
from xenguest_agent.netevents import RESYNC, NetworkEvents
from xenguest_agent.wakeup import Wakeup

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Dict, FrozenSet, List, Optional, Set

log = get_logger(__name__)

#: What a network notification makes the agent collect again.
NET_COLLECTORS = frozenset({"interfaces"})


class LoopSources:
    """One poll() over the wakeup pipe, the network event socket and the file watches."""

    def __init__(self, wakeup: Wakeup, net_events: Optional[NetworkEvents] = None,
                 file_watch: Optional[FileWatch] = None) -> None:
        self.wakeup = wakeup
        self.net = net_events
        self.files = file_watch
        self._poller = select.poll()
        self._poller.register(wakeup.read_fd, select.POLLIN)
        self._net_fd = -1
        self._file_fds: Dict[int, int] = {}
        self._all: FrozenSet[str] = frozenset()
        self.net_lost = False  # the network socket failed for good: the caller polls instead

    def open(self, all_collectors: FrozenSet[str]) -> bool:
        """Open what this OS offers; True when network events are available."""
        self._all = all_collectors
        if self.net is not None and self.net.open():
            self._net_fd = self.net.fileno()
            self._poller.register(self._net_fd, select.POLLIN)
        if self.files is not None and self.files.start():
            for fd, mask in self.files.fds():
                self._file_fds[fd] = mask
                self._poller.register(fd, mask)
        return self._net_fd >= 0

    @property
    def watching_files(self) -> bool:
        return bool(self._file_fds)

    def deadline(self) -> Optional[float]:
        """When the network source needs ``read_ready`` although nothing arrives."""
        return self.net.deadline() if self.net is not None and self._net_fd >= 0 else None

    def wait(self, timeout: float, clock: Callable[[], float]) -> Set[str]:
        """Sleep in poll() for at most ``timeout`` seconds; the collectors to re-run."""
        ready = self._poller.poll(max(0.0, timeout) * 1000.0 + 1.0)  # +1 ms: past the deadline
        fds = {fd for fd, _events in ready}
        if self.wakeup.read_fd in fds:  # an idle tick (a timeout) reads nothing it need not
            self.wakeup.drain()
        dirty: Set[str] = set()
        for fd in fds:
            if fd in self._file_fds and self.files is not None:
                try:
                    dirty |= self.files.handle(fd)
                except OSError as exc:  # one odd file must not end the daemon
                    log.warning("file change events: %s; collecting everything", exc)
                    dirty |= self._all
        net = self.net
        closes = net.deadline() if net is not None else None
        now = clock()
        if net is not None and self._net_fd >= 0 and (self._net_fd in fds
                                                      or (closes is not None and closes <= now)):
            kind = net.read_ready(now)  # drains; never blocks
            if kind == RESYNC:
                dirty |= self._all
            elif kind is not None:
                dirty |= NET_COLLECTORS
            if net.fileno() != self._net_fd:  # failed for good (and closed)
                self._poller.unregister(self._net_fd)
                self._net_fd = -1
                self.net_lost = True
                dirty |= self._all
        return dirty

    def fds(self) -> List[int]:
        """The descriptors polled (for tests and the status)."""
        return [self.wakeup.read_fd] + ([self._net_fd] if self._net_fd >= 0 else []) + \
            list(self._file_fds)

    def close(self) -> None:
        if self.net is not None:
            self.net.close()
        if self.files is not None:
            self.files.close()
        self.wakeup.close()
