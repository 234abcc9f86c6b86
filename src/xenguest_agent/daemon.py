"""The long-running loop: one thread waits in poll(), everything else sets flags.

Producers never hand work to the loop through a lock: signal handlers set a
flag (and CPython's C handler writes a byte to the wakeup pipe), the watch
connection's thread appends to a bounded deque, the network event source sets a
flag; each then wakes the loop through :class:`~xenguest_agent.wakeup.Wakeup`.
The network event socket (rtnetlink, the FreeBSD routing socket) is polled by
the loop itself.
The loop coalesces what accumulated into "dirty" flags and does the work once
per wake-up, control requests first, so nothing can pile up behind anything.

Timers are deadlines the loop computes:

* with a network event source: interfaces are re-collected on each
  notification, memory every ``MEMORY_CHECK`` seconds (reading it only, unless
  the memory rule says a write is due), everything every ``interval`` seconds
  (the safety sweep, in case an event was missed);
* the systemd watchdog ping, carried by the memory check's wake-up;
* without one: everything every ``poll_interval`` seconds (said at start-up);
* the shutdown grace period of a pending control request;
* the reconnect backoff while XenStore is unreachable.

Failure policy: a XenStore error never ends the daemon.  A lost connection is
retried with a short exponential backoff (a local socket or device is cheap to
try) and followed by a full republish, because a restarted xenstored has an
empty tree.  Signals are served while disconnected.

Resume and migration: the guest's XenStore tree is not migrated, so after a
restore or migration every key is gone and the domain may have a new domid.
Signs, any of which triggers a full republish and the post-resume hooks:
``unique-domain-id`` changed (xenopsd writes a new one; CA-30811), ``domid``
changed (plain xl: a restore or migration makes a new domain), or the clock
jumped (CLOCK_BOOTTIME advances over a suspend, CLOCK_MONOTONIC does not: a
checkpoint or a suspend/resume in place keeps domid).  After a resume the
kernel re-registers every watch of the xenbus device and each fires once.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from typing import Callable, Deque, FrozenSet, List, Optional, Set, Tuple

from xenguest_agent import schema
from xenguest_agent.agent import COLLECTORS, Agent
from xenguest_agent.config import Config
from xenguest_agent.control import SHUTDOWN_KEY, Control
from xenguest_agent.filewatch import FileWatch
from xenguest_agent.hooks import Hooks
from xenguest_agent.loopsources import LoopSources
from xenguest_agent.netevents import NetworkEvents
from xenguest_agent.publisher import Publisher
from xenguest_agent.sdnotify import Notifier
from xenguest_agent.wakeup import Wakeup
from xenguest_agent.xenstore import XenStore, XenStoreError, XenStoreUnavailable

log = logging.getLogger(__name__)

#: Written by xenopsd at domain creation, before unpausing (CA-30811), and new
#: on every resume or migration.  Plain xl/libxl does not write it.
UNIQUE_DOMAIN_ID = "unique-domain-id"
DOMID = "domid"

def watch_token(path: str) -> str:
    """The token of the watch on ``path``: one token per watch, never shared.  FreeBSD's
    /dev/xen/xenstore refuses an XS_WATCH whose token is already registered on the open file
    with EINVAL (freebsd-src sys/dev/xen/xenstore/xenstore_dev.c ``xs_dev_write``,
    ``xs_dev_find_watch``); Linux's device and xenstored accept it."""
    return "xenguest-agent:" + path


TOKEN_UNIQUE_DOMAIN_ID = watch_token(UNIQUE_DOMAIN_ID)
TOKEN_DOMID = watch_token(DOMID)
TOKEN_SHUTDOWN = watch_token(SHUTDOWN_KEY)
DOMAIN_TOKENS = frozenset({TOKEN_DOMID, TOKEN_UNIQUE_DOMAIN_ID})
#: What the agent owns and keeps true: one watch each (they do not nest), so
#: another writer's change or removal is seen and repaired (publisher.py).
OWNED_PATHS = schema.OWNED_TREES + schema.OWNED_KEYS

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0

#: Watch events kept between two wake-ups; past this the loop treats the batch
#: as "anything may have changed" (a full check) instead of growing.
WATCH_BACKLOG = 1024

#: A gap between CLOCK_BOOTTIME and CLOCK_MONOTONIC that grew by more than this
#: means the domain was suspended (the loop never sleeps this long unnoticed).
SUSPEND_JUMP = 2.0

ALL = frozenset(COLLECTORS)
MEMORY_ONLY = frozenset({"memory"})

#: How often memory is checked (with a network event source).  The systemd
#: watchdog ping rides on the same wake-up: three wake-ups a minute while idle.
MEMORY_CHECK = 20.0


def ping_window(ping: float) -> Tuple[float, float]:
    """(earliest, latest) delay after a ping for the next one, given the notifier's
    interval (half of WATCHDOG_USEC): like systemd's own event loop (systemd
    src/libsystemd/sd-event/sd-event.c, ``arm_watchdog``: between 1/2 and 3/4 of the
    period, at a time that coalesces with other wake-ups; ``process_watchdog``: never
    sooner than 1/4 of it).  With WatchdogSec=30s in systemd/xenguest-agent.service:
    7.5 s and 22.5 s."""
    return ping / 2, ping * 1.5


def tick_interval(ping: Optional[float]) -> float:
    """The memory check's period: ``MEMORY_CHECK``, or less when the watchdog needs a
    ping sooner, so that each check's wake-up carries the ping."""
    return MEMORY_CHECK if ping is None else min(MEMORY_CHECK, ping_window(ping)[1])


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
                 suspended: Callable[[], float] = suspended_seconds,
                 file_watch: Optional[FileWatch] = None,
                 notifier: Optional[Notifier] = None) -> None:
        self.agent = agent
        self.store = store
        self.publisher = publisher
        self.config = config
        self.control = control
        self.hooks = hooks
        self.clock = clock
        self.suspended = suspended
        self.wakeup = Wakeup()
        self.sources = LoopSources(self.wakeup, net_events, file_watch)
        self.notifier = notifier if notifier is not None else Notifier(None)
        # flags set by producers (signal handlers, other threads); read and cleared by the loop
        self._stop_requested = False
        self._hup_requested = False
        self._watch_overflow = False
        self._watch_events: Deque[Tuple[str, str]] = collections.deque()
        # loop state
        self._stopping = False
        self._connected = False
        self._backoff = BACKOFF_FIRST
        self._next_reconnect = 0.0
        self._dirty: Set[str] = set()
        self._full = False
        self._repair = False
        self._domain: Tuple[Optional[str], Optional[str]] = (None, None)
        self._suspended_base = suspended()
        self.rounds = 0
        self.resumes = 0
        self._jobs_done = False
        if hooks is not None:  # a finished hook or command wakes the loop
            hooks.notify = self._on_jobs_done

    # --- producers (any thread, or a signal handler): flags and a wake-up only -------------

    def stop(self) -> None:
        """Ask the loop to finish (thread-safe, signal-safe)."""
        self._stop_requested = True
        self.wakeup.wake()

    def _on_watch(self, path: str, token: str) -> None:  # on the watch connection's thread
        if len(self._watch_events) >= WATCH_BACKLOG:
            self._watch_overflow = True
        else:
            self._watch_events.append((path, token))
        self.wakeup.wake()

    def _on_jobs_done(self) -> None:  # on a hook job's thread
        self._jobs_done = True
        self.wakeup.wake()

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._hup_requested = True
        else:
            self._stop_requested = True
        # the C-level handler already wrote to the wakeup fd (set_wakeup_fd)

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop the daemon; SIGHUP forces a full republish."""
        if threading.current_thread() is not threading.main_thread():
            return
        signal.set_wakeup_fd(self.wakeup.write_fd, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    # --- XenStore session ----------------------------------------------------------------

    def _read_key(self, path: str) -> Optional[str]:
        """A read whose refusal concerns this key only (None, logged)."""
        try:
            return self.store.read(path)
        except XenStoreUnavailable:
            raise
        except XenStoreError as exc:
            log.warning("cannot read %s: %s", path, exc)
            return None

    def _read_domain(self) -> Tuple[Optional[str], Optional[str]]:
        return self._read_key(DOMID), self._read_key(UNIQUE_DOMAIN_ID)

    def _watch(self, path: str) -> None:
        """One watch; a refusal about this path is logged and the others still go."""
        try:
            self.store.watch(path, watch_token(path))
        except XenStoreUnavailable:
            raise
        except XenStoreError as exc:
            log.warning("cannot watch %s: %s", path, exc)

    def _start_session(self) -> None:
        """Watches first (nothing that can fail for one key comes before them), then a
        full publish: the tree may be empty or someone else's."""
        self.store.on_event(self._on_watch)
        if self.control is not None:
            self._watch(SHUTDOWN_KEY)
        self._watch(DOMID)
        self._watch(UNIQUE_DOMAIN_ID)
        for path in OWNED_PATHS:
            self.publisher.expect_event(path)  # a new watch fires once: not a change
            self._watch(path)
        self._connected = True
        self._domain = self._read_domain()
        if self.control is not None:
            self.control.learn(self.store)
        self._full = True
        self._publish_dirty()

    def _publish(self, only: Optional[Tuple[str, ...]] = None) -> None:
        extra = self.control.advertised() if self.control is not None else None
        self.agent.publish(self.store, self.publisher, extra, only)
        self.rounds += 1

    def _publish_dirty(self) -> None:
        """One publish for everything pending: a full republish, collectors to re-run,
        owned keys another writer changed (repair), refused keys due for a retry."""
        full, dirty, repair = self._full, self._dirty, self._repair or self.publisher.needs_repair
        retry = self.publisher.next_retry()
        if not (full or dirty or repair or (retry is not None and self.clock() >= retry)):
            return
        self._full, self._dirty, self._repair = False, set(), False
        if full:
            self.agent.forget()
            self.publisher.invalidate()
        # only=(): no collector runs, the last facts are rendered and compared again
        self._publish(None if full or dirty >= ALL else tuple(sorted(dirty)))

    def _lost(self, exc: XenStoreError) -> None:
        log.warning("lost XenStore: %s; reconnecting", exc)
        self.store.close()
        self._connected = False
        self._backoff = BACKOFF_FIRST
        self._next_reconnect = self.clock()

    def _try_reconnect(self) -> None:
        try:
            self.store.connect()
            self._start_session()
        except XenStoreUnavailable as exc:
            self.store.close()
            self._connected = False
            log.warning("XenStore still unavailable (%s); retrying in %.1fs", exc, self._backoff)
            self._next_reconnect = self.clock() + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            return
        except XenStoreError as exc:  # connected, but a refusal: publish retries next round
            log.warning("XenStore refused a request after reconnecting: %s", exc)
        log.info("XenStore connection re-established; full republish done")

    def _guarded(self, action: Callable[[], None]) -> None:
        """Run one step; a broken connection leads to reconnect, other errors to a log line."""
        if not self._connected:
            return
        try:
            action()
            if not self.store.watching:
                raise XenStoreUnavailable("the watch connection was lost")
        except XenStoreUnavailable as exc:
            self._lost(exc)
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
        self._full = True
        self._publish_dirty()
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

    # --- one wake-up's worth of work -----------------------------------------------------

    def _take_watch_events(self) -> Tuple[bool, bool]:
        """(a domain key may have changed, control/shutdown may have changed)."""
        domain = control = self._watch_overflow
        self._watch_overflow = False
        if domain:  # events were dropped: owned keys may have changed too
            self._repair = True
        while self._watch_events:
            path, token = self._watch_events.popleft()
            if token in DOMAIN_TOKENS:
                domain = True
            elif token == TOKEN_SHUTDOWN:
                control = True
            elif self.publisher.note_event(path):
                self._repair = True
        return domain, control

    def _serve(self) -> None:
        """Everything the flags say happened, control first, then one publish."""
        if self._stop_requested:
            self._stopping = True
            return
        if self._hup_requested:
            self._hup_requested = False
            log.info("SIGHUP: full republish")
            self._full = True
        domain, control = self._take_watch_events()
        if domain:
            self._guarded(self._check_resume)
        if control and self.control is not None:
            self._guarded(lambda: self.control.on_event(self.store))  # type: ignore[union-attr]
        if self._jobs_done:  # a hook or a power command finished: the request's next step
            self._jobs_done = False
            if self.control is not None:
                try:  # needs no XenStore: runs while disconnected too
                    self.control.poll()
                except Exception:  # a bug must not end a guest agent
                    log.exception("unexpected error finishing a control request")

    def _control_deadline(self, now: float) -> None:
        control = self.control
        if control is None:
            return
        deadline = control.deadline()
        if deadline is not None and now >= deadline:
            self._guarded(lambda: control.on_deadline(self.store))

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
            self.sources.close()
            return 0
        self.notifier.ready()
        self.notifier.status(f"publishing to {self.store.spec}")
        if self.sources.open(ALL):
            log.info("network changes: %s events; memory checked every %gs, full sweep every %gs",
                     self.sources.net.name if self.sources.net is not None else "no",
                     tick_interval(self.notifier.watchdog_interval), self.config.interval)
            tick, tick_only = tick_interval(self.notifier.watchdog_interval), MEMORY_ONLY
            sweep: Optional[float] = self.config.interval
        else:
            log.info("network changes: no event source here; polling everything every %gs",
                     self.config.poll_interval)
            tick, tick_only, sweep = self.config.poll_interval, ALL, None
        try:
            return self._loop(tick, tick_only, sweep)
        finally:
            self.notifier.stopping()
            if self.control is not None:
                self.control.cancel()
            if self.hooks is not None:
                self.hooks.cancel_all()
            self.sources.close()
            self.notifier.close()

    def _loop(self, tick: float, tick_only: FrozenSet[str], sweep: Optional[float]) -> int:
        now = self.clock()
        next_round = now + tick
        next_sweep = None if sweep is None else now + sweep
        ping = self.notifier.watchdog_interval
        soonest, latest = ping_window(ping) if ping is not None else (0.0, 0.0)
        next_ping = None if ping is None else now  # the deadline: READY is followed by a ping
        last_ping = now
        was_connected = True
        while True:
            self._serve()
            if self._stopping:
                break
            now, timed = self.clock(), False
            if not self._connected:
                if now >= self._next_reconnect:
                    self._try_reconnect()
            else:
                self._check_clock()
                self._control_deadline(now)
                if next_sweep is not None and now >= next_sweep:
                    self._dirty |= ALL  # the safety sweep: collect and compare everything
                    next_sweep = now + sweep  # type: ignore[operator]
                    next_round, timed = now + tick, True
                elif now >= next_round:
                    # the memory tick: past reading the figures, nothing runs unless due
                    if tick_only != MEMORY_ONLY or self.agent.memory_moved():
                        self._dirty |= tick_only
                    next_round, timed = now + tick, True
                self._guarded(self._publish_dirty)
            if self._connected != was_connected:
                was_connected = self._connected
                self.notifier.status(f"publishing to {self.store.spec}" if self._connected
                                     else "XenStore unavailable: reconnecting")
            # from the loop itself: a wedged loop stops the pings.  A timed round (the
            # memory tick, the sweep) pings too unless the last ping is very recent, so
            # the tick's wake-up carries the ping and the deadline rarely wakes alone.
            if next_ping is not None and (now >= next_ping or (timed and now >= last_ping + soonest)):
                self.notifier.watchdog()
                last_ping, next_ping = now, now + latest
            deadlines: List[Optional[float]] = [
                next_round if self._connected else self._next_reconnect,
                next_sweep if self._connected else None,
                next_ping, self.sources.deadline(),
                self.control.deadline() if self.control is not None else None,
                self.publisher.next_retry() if self._connected else None]
            timeout = min(d for d in deadlines if d is not None) - self.clock()
            self._dirty |= self.sources.wait(timeout, self.clock)
            if self.sources.net_lost and sweep is not None:  # no more events: poll instead
                log.warning("network events lost; polling everything every %gs",
                            self.config.poll_interval)
                tick, tick_only, sweep, next_sweep = self.config.poll_interval, ALL, None, None
        log.info("stopped after %d rounds", self.rounds)
        return 0
