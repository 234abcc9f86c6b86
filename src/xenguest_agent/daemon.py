"""The long-running loop: one event queue, one consumer.

Producers put events on one queue: XenStore watch events (on the watch
connection's thread), signals, and (later) network change notifications; timers
are deadlines the consumer computes, so no timer threads exist.  The consumer is
the only thread that talks to XenStore, which keeps the pyxs adapter simple.

Failure policy: a XenStore error never ends the daemon.  A lost connection is
re-established with exponential backoff (0.5 s doubling to 30 s) and followed by
a full republish, because a restarted xenstored has an empty tree.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from typing import Callable, Optional, Tuple

from xenguest_agent.agent import Agent
from xenguest_agent.config import Config
from xenguest_agent.publisher import Publisher
from xenguest_agent.xenstore import XenStore, XenStoreError, XenStoreUnavailable

log = logging.getLogger(__name__)

#: Written by the toolstack at domain creation (xenopsd, before unpausing;
#: CA-30811) and changed on every resume or migration, when the guest's XenStore
#: tree has been rebuilt from scratch.  Plain xl/libxl does not write it.
UNIQUE_DOMAIN_ID = "unique-domain-id"

TOKEN_DOMAIN = "xenguest-agent:domain"

Event = Tuple[str, ...]

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0


class Daemon:
    """Drives an :class:`Agent` against a :class:`XenStore` until told to stop."""

    def __init__(self, agent: Agent, store: XenStore, publisher: Publisher, config: Config,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.agent = agent
        self.store = store
        self.publisher = publisher
        self.config = config
        self.clock = clock
        self.events: "queue.Queue[Event]" = queue.Queue()
        self._stopping = False
        self._domain_id: Optional[str] = None
        self.rounds = 0

    # --- producers -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish (thread-safe)."""
        self.events.put(("stop",))

    def _on_watch(self, path: str, token: str) -> None:
        self.events.put(("watch", path, token))

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.events.put(("signal", str(signum)))

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop the daemon; SIGHUP forces a full republish."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    # --- XenStore session ----------------------------------------------------------------

    def _start_session(self) -> None:
        """Watches, then a full publish (the tree may be empty or someone else's)."""
        self.store.on_event(self._on_watch)
        self._domain_id = self.store.read(UNIQUE_DOMAIN_ID)
        self.store.watch(UNIQUE_DOMAIN_ID, TOKEN_DOMAIN)
        self.agent.forget()
        self.publisher.invalidate()
        self._publish()

    def _publish(self) -> None:
        self.agent.publish(self.store, self.publisher)
        self.rounds += 1

    def _reconnect(self) -> bool:
        """Reconnect with backoff until it works or a stop arrives; True if connected."""
        delay = BACKOFF_FIRST
        while not self._stopping:
            try:
                self.store.connect()
                self._start_session()
                log.info("XenStore connection re-established; full republish done")
                return True
            except XenStoreError as exc:
                log.warning("XenStore still unavailable (%s); retrying in %.1fs", exc, delay)
                self.store.close()
            self._wait_or_stop(delay)
            delay = min(delay * 2, BACKOFF_MAX)
        return False

    def _wait_or_stop(self, seconds: float) -> None:
        deadline = self.clock() + seconds
        while not self._stopping:
            remaining = deadline - self.clock()
            if remaining <= 0:
                return
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                return
            if event[0] == "stop" or (event[0] == "signal" and event[1] != str(int(signal.SIGHUP))):
                self._stopping = True

    def _guarded(self, action: Callable[[], None]) -> None:
        """Run one step; a broken connection leads to reconnect, other errors to a log line."""
        try:
            action()
            if not self.store.watching:
                raise XenStoreUnavailable("the watch connection was lost")
        except XenStoreUnavailable as exc:
            log.warning("lost XenStore: %s", exc)
            self.store.close()
            self._reconnect()
        except XenStoreError as exc:
            log.warning("XenStore refused a request: %s; retrying next round", exc)
        except Exception:  # a bug must not end a guest agent; say it loudly and go on
            log.exception("unexpected error in the agent loop")

    # --- events --------------------------------------------------------------------------

    def _domain_changed(self) -> None:
        current = self.store.read(UNIQUE_DOMAIN_ID)
        if current == self._domain_id:
            return  # the registration firing, or a spurious event
        log.info("unique-domain-id changed (%s -> %s): resumed or migrated; republishing everything",
                 self._domain_id, current)
        self._domain_id = current
        self.agent.forget()
        self.publisher.invalidate()
        self._publish()

    def _handle(self, event: Event) -> None:
        kind = event[0]
        if kind == "stop":
            self._stopping = True
        elif kind == "signal":
            if int(event[1]) == signal.SIGHUP:
                log.info("SIGHUP: full republish")
                self.agent.forget()
                self.publisher.invalidate()
                self._guarded(self._publish)
            else:
                log.info("signal %s: stopping", event[1])
                self._stopping = True
        elif kind == "watch" and event[2] == TOKEN_DOMAIN:
            self._guarded(self._domain_changed)

    # --- the loop ------------------------------------------------------------------------

    def run(self, once: bool = False) -> int:
        """Publish, then (unless ``once``) keep publishing until stopped.

        The store must already be connected; the first session's errors propagate
        so the CLI can exit with a clear message."""
        self._start_session()
        if once:
            return 0
        poll = self.config.poll_interval
        next_round = self.clock() + poll
        while not self._stopping:
            timeout = max(0.0, next_round - self.clock())
            try:
                self._handle(self.events.get(timeout=timeout))
            except queue.Empty:
                pass
            if not self._stopping and self.clock() >= next_round:
                self._guarded(self._publish)
                next_round = self.clock() + poll
        log.info("stopped after %d rounds", self.rounds)
        return 0
