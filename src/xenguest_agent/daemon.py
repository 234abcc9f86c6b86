"""The long-running loop: one event queue, one consumer.

Producers put events on one queue: XenStore watch events (on the watch
connection's thread), network change notifications (rtnetlink or the FreeBSD
routing socket, coalesced; netevents.py) and signals.  Timers are deadlines
the consumer computes, so no timer threads exist:

* with a network event source: interfaces are re-collected on each
  notification, memory every ``memory.min_interval`` seconds, everything every
  ``interval`` seconds (the safety sweep, in case an event was missed);
* without one: everything every ``poll_interval`` seconds (said at start-up);
* the shutdown grace period of a pending control request.

The consumer is the only thread that talks to XenStore.

Failure policy: a XenStore error never ends the daemon.  A lost connection is
re-established with exponential backoff (0.5 s doubling to 30 s) and followed by
a full republish, because a restarted xenstored has an empty tree.

Resume and migration: the guest's XenStore tree is not migrated, so after a
restore or migration every key is gone and the domain may have a new domid.
Signs, any of which triggers a full republish and the post-resume hooks:
``unique-domain-id`` changed (xenopsd writes a new one; CA-30811), ``domid``
changed (plain xl: a restore or migration makes a new domain), or the clock
jumped (CLOCK_BOOTTIME advances over a suspend, CLOCK_MONOTONIC does not: a
checkpoint or a suspend/resume in place keeps domid).  After a resume the
kernel re-registers every watch and each fires once, so the check runs on
every watch event.
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
from xenguest_agent.control import SHUTDOWN_KEY, Control
from xenguest_agent.hooks import Hooks
from xenguest_agent.netevents import RESYNC, NetworkEvents
from xenguest_agent.publisher import Publisher
from xenguest_agent.xenstore import XenStore, XenStoreError, XenStoreUnavailable

log = logging.getLogger(__name__)

#: Written by xenopsd at domain creation, before unpausing (CA-30811), and new
#: on every resume or migration.  Plain xl/libxl does not write it.
UNIQUE_DOMAIN_ID = "unique-domain-id"
DOMID = "domid"

TOKEN_DOMAIN = "xenguest-agent:domain"
TOKEN_SHUTDOWN = "xenguest-agent:shutdown"

Event = Tuple[str, ...]

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0

#: A gap between CLOCK_BOOTTIME and CLOCK_MONOTONIC that grew by more than this
#: means the domain was suspended (the loop never sleeps this long unnoticed).
SUSPEND_JUMP = 2.0


def suspended_seconds() -> float:
    """Time spent suspended since boot (Linux: BOOTTIME - MONOTONIC); 0 where unknown."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return 0.0
    return time.clock_gettime(boottime) - time.monotonic()


class Daemon:
    """Drives an :class:`Agent` and a :class:`Control` against a :class:`XenStore`."""

    def __init__(self, agent: Agent, store: XenStore, publisher: Publisher, config: Config,
                 control: Optional[Control] = None, hooks: Optional[Hooks] = None,
                 net_events: Optional[NetworkEvents] = None,
                 clock: Callable[[], float] = time.monotonic,
                 suspended: Callable[[], float] = suspended_seconds) -> None:
        self.agent = agent
        self.store = store
        self.publisher = publisher
        self.config = config
        self.control = control
        self.hooks = hooks
        self.net_events = net_events
        self.clock = clock
        self.suspended = suspended
        self.events: "queue.Queue[Event]" = queue.Queue()
        self._stopping = False
        self._domain: Tuple[Optional[str], Optional[str]] = (None, None)
        self._suspended_base = suspended()
        self.rounds = 0
        self.resumes = 0
        if hooks is not None:  # a finished hook or command wakes the loop
            hooks.notify = lambda: self.events.put(("jobs",))

    # --- producers -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish (thread-safe)."""
        self.events.put(("stop",))

    def _on_watch(self, path: str, token: str) -> None:
        self.events.put(("watch", path, token))

    def _on_network(self, kind: str) -> None:  # on the event source's thread
        self.events.put(("net", kind))

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.events.put(("signal", str(signum)))

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop the daemon; SIGHUP forces a full republish."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    # --- XenStore session ----------------------------------------------------------------

    def _read_domain(self) -> Tuple[Optional[str], Optional[str]]:
        return self.store.read(DOMID), self.store.read(UNIQUE_DOMAIN_ID)

    def _start_session(self) -> None:
        """Watches, then a full publish (the tree may be empty or someone else's)."""
        self.store.on_event(self._on_watch)
        self._domain = self._read_domain()
        if self.control is not None:
            self.control.learn(self.store)
        self.store.watch(UNIQUE_DOMAIN_ID, TOKEN_DOMAIN)
        self.store.watch(DOMID, TOKEN_DOMAIN)
        if self.control is not None:
            self.store.watch(SHUTDOWN_KEY, TOKEN_SHUTDOWN)
        self.agent.forget()
        self.publisher.invalidate()
        self._publish()

    def _publish(self, only: Optional[Tuple[str, ...]] = None) -> None:
        extra = self.control.advertised() if self.control is not None else None
        self.agent.publish(self.store, self.publisher, extra, only)
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

    # --- resume and migration ------------------------------------------------------------

    def _check_resume(self, clock_jump: bool = False) -> None:
        """Compare domid and unique-domain-id with what the session started with."""
        old_domid, old_uuid = self._domain
        domid, uuid = self._read_domain()
        if (domid, uuid) == self._domain and not clock_jump:
            return
        self._domain = (domid, uuid)
        migrated = domid != old_domid
        self.resumes += 1
        log.info("domain resumed%s (domid %s -> %s, unique-domain-id %s -> %s%s): "
                 "republishing everything", " in a new domain" if migrated else "",
                 old_domid, domid, old_uuid, uuid, ", clock jumped" if clock_jump else "")
        if self.control is not None:
            self.control.forget()
            self.control.learn(self.store)
        self.agent.forget()
        self.publisher.invalidate()
        self._publish()
        if self.hooks is not None:
            details = {"old_domid": old_domid or "", "new_domid": domid or "",
                       "unique_domain_id": uuid or "", "old_unique_domain_id": old_uuid or ""}
            self.hooks.start("post-resume", details)
            if migrated:
                self.hooks.start("post-migrate", details)

    def _check_clock(self) -> None:
        now = self.suspended()
        if now - self._suspended_base > SUSPEND_JUMP:
            log.info("the clock jumped %.1fs: the domain was suspended", now - self._suspended_base)
            self._suspended_base = now
            self._guarded(lambda: self._check_resume(clock_jump=True))
        else:
            self._suspended_base = max(self._suspended_base, now)

    # --- events --------------------------------------------------------------------------

    def _on_watch_event(self, token: str) -> None:
        self._check_resume()
        if token == TOKEN_SHUTDOWN and self.control is not None:
            self.control.on_event(self.store)

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
        elif kind == "watch":
            self._guarded(lambda: self._on_watch_event(event[2]))
        elif kind == "jobs":
            if self.control is not None:
                self.control.poll()
        elif kind == "net":
            only = None if event[1] == RESYNC else ("interfaces",)
            self._guarded(lambda: self._publish(only))

    # --- the loop ------------------------------------------------------------------------

    def run(self, once: bool = False) -> int:
        """Publish, then (unless ``once``) keep publishing until stopped.

        The store must already be connected.  If XenStore is unreachable at the
        start the error propagates (the CLI exits 69 and says why); a refusal
        is logged and the loop retries."""
        try:
            self._start_session()
        except XenStoreUnavailable:
            raise
        except XenStoreError as exc:
            log.warning("first publish incomplete: %s; retrying each round", exc)
        if once:
            return 0
        if self.net_events is not None and self.net_events.start(self._on_network):
            log.info("network changes: %s events; memory checked every %gs, full sweep every %gs",
                     self.net_events.name, self.config.memory.min_interval, self.config.interval)
            tick, tick_only = max(self.config.memory.min_interval, 0.5), ("memory",)
            sweep = self.config.interval
        else:
            log.info("network changes: no event source here; polling everything every %gs",
                     self.config.poll_interval)
            tick, tick_only, sweep = self.config.poll_interval, None, None
        try:
            return self._loop(tick, tick_only, sweep)
        finally:
            if self.net_events is not None:
                self.net_events.stop()
            if self.control is not None:
                self.control.cancel()
            if self.hooks is not None:
                self.hooks.cancel_all()

    def _loop(self, tick: float, tick_only: Optional[Tuple[str, ...]], sweep: Optional[float]) -> int:
        next_round = self.clock() + tick
        next_sweep = None if sweep is None else self.clock() + sweep
        while not self._stopping:
            deadlines = [next_round] + ([next_sweep] if next_sweep is not None else [])
            control_deadline = self.control.deadline() if self.control is not None else None
            if control_deadline is not None:
                deadlines.append(control_deadline)
            timeout = max(0.0, min(deadlines) - self.clock())
            try:
                self._handle(self.events.get(timeout=timeout))
            except queue.Empty:
                pass
            if self._stopping:
                break
            self._check_clock()
            now = self.clock()
            if control_deadline is not None and now >= control_deadline and self.control is not None:
                self._guarded(lambda: self.control.on_deadline(self.store))  # type: ignore[union-attr]
            if next_sweep is not None and now >= next_sweep:
                self._guarded(self._publish)
                next_sweep = self.clock() + sweep  # type: ignore[operator]
                next_round = self.clock() + tick
            elif now >= next_round:
                self._guarded(lambda: self._publish(tick_only))
                next_round = self.clock() + tick
        log.info("stopped after %d rounds", self.rounds)
        return 0
