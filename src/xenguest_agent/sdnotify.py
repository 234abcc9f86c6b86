"""A dependency-free sd_notify(3) client: readiness, status and the watchdog for systemd.

The protocol, as systemd documents it (sd_notify(3), sd_watchdog_enabled(3)) and
implements it (src/libsystemd/sd-daemon/sd-daemon.c, ``pid_notify_with_fds_internal``
and ``sd_watchdog_enabled``):

* ``NOTIFY_SOCKET`` names an AF_UNIX datagram socket: a path starting with ``/``, or an
  abstract-namespace name written with a leading ``@`` (the ``@`` stands for the NUL
  byte that starts the address).  Unset: the service is not supervised, nothing is sent.
  (systemd also accepts ``vsock:`` addresses for VMs; a guest agent is never started that
  way, so they are refused once, logged, and the notifier stays silent.)
* Each message is one datagram of newline-separated ``KEY=VALUE`` assignments:
  ``READY=1``, ``STATUS=...``, ``STOPPING=1``, ``RELOADING=1``, ``WATCHDOG=1``.
* ``WATCHDOG_USEC`` is the watchdog timeout in microseconds (0 or the "infinity"
  value 2**64-1 mean no watchdog); ``WATCHDOG_PID``, when set, names the process the
  watchdog is meant for, which must be this one.  sd_watchdog_enabled(3) advises a
  keep-alive at half the timeout.

Sending never blocks the agent's loop (``MSG_DONTWAIT``: a full socket buffer drops
the message rather than waiting) and never raises into it: a failure is logged once.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from xenguest_agent.log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

log = get_logger(__name__)

USEC_INFINITY = (1 << 64) - 1  # systemd's "no limit" for a usec_t (time-util.h)


def _address(spec: str) -> str | None:
    """The socket address for ``NOTIFY_SOCKET``, or None when it is not an AF_UNIX one."""
    if spec.startswith("/"):
        return spec
    if spec.startswith("@") and len(spec) > 1:
        return "\0" + spec[1:]
    return None


def _watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    usec_text = environ.get("WATCHDOG_USEC")
    if usec_text is None or not usec_text.isdigit():
        return None
    usec = int(usec_text)
    if usec == 0 or usec >= USEC_INFINITY:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner is not None and (not owner.isdigit() or int(owner) != pid):
        return None  # meant for another process (e.g. our parent under a wrapper)
    return usec / 2e6


class Notifier:
    """Tells systemd what the service is doing.  Every method is safe to call when the
    agent is not supervised (no ``NOTIFY_SOCKET``): it then does nothing."""

    def __init__(self, address: str | None, watchdog_interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._address = address
        self._socket: socket.socket | None = None
        self._failed = False
        self._clock = clock
        self.watchdog_interval = watchdog_interval
        """Seconds between two ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None
        when systemd runs no watchdog for this process."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], pid: int | None = None,
                     clock: Callable[[], float] = time.monotonic) -> Notifier:
        """The notifier the environment asks for; a silent one when ``NOTIFY_SOCKET`` is unset."""
        spec = environ.get("NOTIFY_SOCKET")
        if not spec:
            return cls(None)
        address = _address(spec)
        if address is None:
            log.warning("NOTIFY_SOCKET=%r is not an AF_UNIX socket: systemd will not be notified",
                        spec)
            return cls(None)
        return cls(address, _watchdog_interval(environ, os.getpid() if pid is None else pid), clock)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self) -> None:
        """``READY=1``: start-up is over (sent after the first full publish)."""
        self._send("READY=1")

    def status(self, text: str) -> None:
        """``STATUS=``: one line shown by ``systemctl status``."""
        self._send("STATUS=" + " ".join(text.split()))  # one line: no newline may split it

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def reloading(self) -> None:
        """``RELOADING=1`` with the ``MONOTONIC_USEC=`` systemd 253+ requires alongside it;
        follow with :meth:`ready` once the reload is done."""
        self._send(f"RELOADING=1\nMONOTONIC_USEC={int(self._clock() * 1e6)}")

    def watchdog(self) -> None:
        """``WATCHDOG=1``: the loop is alive.  Call it from the loop itself, so that a
        wedged loop stops the pings and systemd restarts the service."""
        if self.watchdog_interval is not None:
            self._send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message.encode("utf-8", "replace"), socket.MSG_DONTWAIT,
                                self._address)
        except OSError as exc:
            if not self._failed:  # once: a missing socket would otherwise log every ping
                self._failed = True
                log.warning("cannot notify systemd through %r: %s (further failures not logged)",
                            self._address.replace("\0", "@"), exc)
