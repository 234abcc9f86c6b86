"""The network event source a poll loop reads, coalesced.

:class:`NetworkEvents` owns one kernel socket (rtnetlink on Linux, the routing
socket on FreeBSD) and answers "something changed" (NET) or "you may have missed
something, re-collect everything" (RESYNC), at most once per coalescing window.
What changed is re-read from the collectors, so a lost or damaged message can
only delay a publish until the safety sweep, never publish wrong data.

The poll interface (no thread)::

    if events.open():                       # False: no source here, poll instead
        ...
        fd = events.fileno()                # register for reading; -1 once closed
        timeout = events.deadline()         # monotonic time read_ready is due, or None
        ...                                 # poll() until fd is readable or the deadline
        kind = events.read_ready(now)       # drains; None, NET or RESYNC
        ...
        events.close()

Nothing happens at import time: no socket is opened before :meth:`open`.
"""

from __future__ import annotations

import errno
import socket
import sys

from xenguest_agent.log import get_logger
from xenguest_agent.netevents.rtnetlink import RESYNC

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol
else:  # a Protocol is for the type checker; at run time a plain base class
    Protocol = object

log = get_logger(__name__)

DEFAULT_WINDOW = 0.05
RECV_SIZE = 65536
#: Datagrams read per call before returning to the loop (a flood must not starve
#: the rest of the loop; the socket stays readable, so the next poll returns at once).
DRAIN_LIMIT = 256


class EventSource(Protocol):
    """A kernel socket that reports link and address changes."""

    name: str

    def available(self) -> bool:
        """Whether this OS can offer the socket at all (no socket is opened)."""

    def open(self) -> socket.socket:
        """A bound, subscribed socket; raises OSError when the kernel refuses."""

    def classify(self, data: bytes, problems: list[str]) -> str | None:
        """Pure: NET, RESYNC or None for one datagram; damage goes to ``problems``."""

    def from_kernel(self, address: object) -> bool:
        """Whether a datagram's source address is the kernel's."""


def select_event_source(os_name: str) -> EventSource | None:
    """The event source for an OS (``platform.system()`` or ``sys.platform`` form),
    or None where there is none and the caller must poll."""
    name = os_name.lower()
    if name.startswith("linux"):
        from xenguest_agent.netevents.rtnetlink import RtnetlinkSource
        return RtnetlinkSource(platform=name)
    if name.startswith("freebsd"):
        from xenguest_agent.netevents.routesock import RouteSocketSource
        return RouteSocketSource(platform=name)
    return None


class Coalescer:
    """Turns a burst of events into one notification.

    The first event opens a window of ``window`` seconds; everything that arrives
    before it closes is merged, and when it closes one notification goes out:
    RESYNC if any event in the window asked for it, NET otherwise.  A fixed
    window (not "wait for quiet") bounds the delay even under a steady stream.
    Pure: the caller passes the time.
    """

    def __init__(self, window: float = DEFAULT_WINDOW) -> None:
        if not window >= 0:  # also refuses NaN
            raise ValueError("the coalescing window must be a number >= 0")
        self.window = window
        self._pending: str | None = None
        self._opened = 0.0

    def add(self, kind: str, now: float) -> None:
        if self._pending is None:
            self._pending, self._opened = kind, now
        elif kind == RESYNC:
            self._pending = RESYNC

    def deadline(self) -> float | None:
        """When the open window closes; None when nothing is pending."""
        return None if self._pending is None else self._opened + self.window

    def due(self, now: float) -> str | None:
        """The notification to send now, if the window has closed (then reset)."""
        if self._pending is None or now < self._opened + self.window:
            return None
        kind, self._pending = self._pending, None
        return kind


class NetworkEvents:
    """The kernel's link and address change notifications, for a poll loop.

    ``open()`` opens the source's socket (non-blocking) and returns True, or
    False with one log line when this OS has no source or the kernel refused.
    The loop waits for ``fileno()`` to be readable or for ``deadline()``,
    then calls ``read_ready(now)``.  That drains what is queued and returns NET
    or RESYNC when a coalescing window has closed, None otherwise.  RESYNC
    follows a receive-buffer overrun (ENOBUFS on both OSes), an NLMSG_OVERRUN,
    or a message that could not be parsed.  A socket that fails for good is
    closed (``fileno()`` then returns -1) and RESYNC is returned at once: the
    loop unregisters the old descriptor and relies on its safety sweep.
    """

    def __init__(self, source: EventSource | None = None, window: float = DEFAULT_WINDOW,
                 os_name: str | None = None) -> None:
        self.source = source if source is not None else select_event_source(
            os_name if os_name is not None else sys.platform)
        self.coalescer = Coalescer(window)
        self._sock: socket.socket | None = None
        self._warned: set[str] = set()

    @property
    def name(self) -> str:
        return self.source.name if self.source is not None else "none"

    # --- the poll interface -------------------------------------------------------------

    def open(self) -> bool:
        """Open the kernel socket; False (and one log line) when there is none."""
        if self._sock is not None:
            return True
        if self.source is None or not self.source.available():
            log.info("no network event source (%s) on %s; network changes are polled",
                     self.name, getattr(self.source, "platform", sys.platform))
            return False
        try:
            sock = self.source.open()
        except OSError as exc:
            log.warning("cannot open the %s (%s); network changes are polled", self.source.name, exc)
            return False
        sock.setblocking(False)
        self._sock = sock
        log.info("listening to the %s for network changes (coalescing window %.0f ms)",
                 self.source.name, self.coalescer.window * 1000)
        return True

    def fileno(self) -> int:
        """The kernel socket's descriptor to poll for reading; -1 when not open."""
        return self._sock.fileno() if self._sock is not None else -1

    def deadline(self) -> float | None:
        """The monotonic time by which ``read_ready`` must be called even if the
        socket stays quiet (a window is open); None when nothing is pending."""
        return self.coalescer.deadline()

    def read_ready(self, now: float) -> str | None:
        """Drain the socket (never blocks) and return the notification due at ``now``."""
        if self._sock is not None and not self._drain(self._sock, now):
            self.close()
            self.coalescer = Coalescer(self.coalescer.window)
            return RESYNC
        return self.coalescer.due(now)

    def close(self) -> None:
        """Close the kernel socket (idempotent)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message + " (reported once)", *args)

    def _drain(self, sock: socket.socket, now: float) -> bool:
        """Read what is queued into the coalescer; False when the socket is broken."""
        assert self.source is not None
        for _ in range(DRAIN_LIMIT):
            try:
                data, address = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped messages
                    log.info("%s overrun (ENOBUFS): full re-collect", self.source.name)
                    self.coalescer.add(RESYNC, now)
                    continue
                log.error("reading the %s failed (%s); network changes now rely on the "
                          "safety sweep", self.source.name, exc)
                return False
            if not self.source.from_kernel(address):
                continue
            problems: list[str] = []
            try:
                kind = self.source.classify(data, problems)
            except Exception:  # classifiers never raise; a bug there must not end the loop
                log.exception("parsing a %s message failed", self.source.name)
                kind, problems = None, ["parser error"]
            if problems:
                self._warn_once("parse", "unreadable %s message: %s; full re-collect",
                                self.source.name, problems[0])
                kind = RESYNC
            if kind is not None:
                self.coalescer.add(kind, now)
        return True
