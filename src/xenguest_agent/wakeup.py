"""A self-pipe that wakes the daemon's poll() from signal handlers and other threads.

Why not a queue: ``queue.Queue.put`` takes a lock, and a Python signal handler
runs in the main thread between two bytecodes, possibly while that same thread
holds the lock inside ``get``: the handler then waits for itself forever.  A
write of one byte to a non-blocking pipe takes no lock, and is what CPython's
own ``signal.set_wakeup_fd`` does from its C-level handler, so a burst of
signals can at worst fill the pipe (extra bytes are dropped, nothing blocks).
What happened is carried by flags the producers set, never by the bytes.
"""

from __future__ import annotations

import os


class Wakeup:
    """The read end is polled by the loop; :meth:`wake` may be called from anywhere."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        for fd in (self.read_fd, self.write_fd):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)

    def wake(self) -> None:
        """Make the next (or current) poll() return.  Never blocks, never raises."""
        try:
            os.write(self.write_fd, b"\0")
        except OSError:  # full (a burst: one pending byte is enough) or closed at stop
            pass

    def drain(self) -> None:
        """Empty the pipe (after a wake-up, before looking at the flags)."""
        try:
            while os.read(self.read_fd, 4096):
                pass
        except OSError:  # BlockingIOError: empty
            pass

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.read_fd = self.write_fd = -1
