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

Resume and migration (resume.py): after a restore or a migration the tree is
empty and the domain may be new; any sign of it means a full republish and the
post-resume (and post-migrate) hooks.  After a resume the kernel re-registers
every watch of the xenbus device and each fires once.

What the daemon is doing is kept in a small state file under /run for
``xenguest-agent status`` (statefile.py), rewritten only when it changes.
"""

from __future__ import annotations

import signal
import threading
import time

from xenguest_agent.agent import COLLECTORS, Agent
from xenguest_agent.config import Config
from xenguest_agent.control import Control
from xenguest_agent.filewatch import FileWatch
from xenguest_agent.hooks import Hooks
from xenguest_agent.log import get_logger
from xenguest_agent.loopsources import LoopSources
from xenguest_agent.netevents import NetworkEvents
from xenguest_agent.publisher import Publisher
from xenguest_agent.resume import ResumeDetector, suspended_seconds
from xenguest_agent.sdnotify import Notifier
from xenguest_agent.shutdownstate import run_shutdown_hooks
from xenguest_agent.statefile import StateFile, wall_clock
from xenguest_agent.ticks import ping_window, tick_interval
from xenguest_agent.wakeup import Wakeup
from xenguest_agent.watches import WatchInbox, set_watches
from xenguest_agent.xenstore import XenStore, XenStoreError, XenStoreUnavailable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, FrozenSet, List, Optional, Set, Tuple

    from xenguest_agent.hotplug import HotplugThread
    from xenguest_agent.staticip.driver import StaticIpDriver

log = get_logger(__name__)


BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0

ALL = frozenset(COLLECTORS)
MEMORY_ONLY = frozenset({"memory"})

class Daemon:
    """Drives an :class:`Agent` and a :class:`Control` against a :class:`XenStore`."""

    def __init__(self, agent: Agent, store: XenStore, publisher: Publisher, config: Config,
                 control: Optional[Control] = None, hooks: Optional[Hooks] = None,
                 net_events: Optional[NetworkEvents] = None,
                 clock: Callable[[], float] = time.monotonic,
                 suspended: Callable[[], float] = suspended_seconds,
                 file_watch: Optional[FileWatch] = None,
                 notifier: Optional[Notifier] = None,
                 hotplug: Optional[HotplugThread] = None,
                 state: Optional[StateFile] = None,
                 static_ip: Optional[StaticIpDriver] = None,
                 shutdown_kind: Optional[Callable[[], Optional[str]]] = None) -> None:
        self.agent = agent
        self.store = store
        self.publisher = publisher
        self.config = config
        self.control = control
        self.hooks = hooks
        self.shutdown_kind = shutdown_kind
        self.clock = clock
        self.resume = ResumeDetector(suspended)
        self.state = state
        self.wakeup = Wakeup()
        self.sources = LoopSources(self.wakeup, net_events, file_watch)
        self.notifier = notifier if notifier is not None else Notifier(None)
        self.hotplug = hotplug
        self.static_ip = static_ip
        if static_ip is not None:  # a finished job wakes the loop to write its result
            static_ip.notify = self._on_jobs_done
        # flags set by producers (signal handlers, other threads); read and cleared by the loop
        self._stop_requested = False
        self._hup_requested = False
        self._connection_ended = False
        self.watches = WatchInbox(self.wakeup.wake)
        # loop state
        self._stopping = False
        self._connected = False
        self._backoff = BACKOFF_FIRST
        self._next_reconnect = 0.0
        self._dirty: Set[str] = set()
        self._full = False
        self._repair = False
        self.rounds = 0
        self.resumes = 0
        self._jobs_done = False
        self._static_ip_nics: Optional[Tuple[Tuple[str, str, int, Tuple[str, ...]], ...]] = None
        if hooks is not None:  # a finished hook or command wakes the loop
            hooks.notify = self._on_jobs_done

    # --- producers (any thread, or a signal handler): flags and a wake-up only -------------

    def stop(self) -> None:
        """Ask the loop to finish (thread-safe, signal-safe)."""
        self._stop_requested = True
        self.wakeup.wake()

    def _on_connection_ended(self) -> None:  # on a XenStore connection's thread
        self._connection_ended = True
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

    def _start_session(self) -> None:
        """Watches first (nothing that can fail for one key comes before them), then a
        full publish: the tree may be empty or someone else's."""
        self.store.on_event(self.watches.put)
        self.store.on_lost(self._on_connection_ended)
        set_watches(self.store, self.control is not None, self.publisher.expect_event,
                    self.static_ip.watch_paths() if self.static_ip is not None else ())
        self._connected = True
        self.resume.start(self.store)
        if self.control is not None:
            self.control.learn(self.store)
        self._full = True
        self._publish_dirty()
        self._record(connected=True)

    def _record(self, **fields: object) -> None:
        """Keep the state file current (for ``status``); never worth stopping for."""
        if self.state is None:
            return
        try:
            self.state.update(**fields)
        except OSError as exc:
            log.warning("cannot write the state file %s: %s", self.state.path, exc)
            self.state = None

    def _publish(self, only: Optional[Tuple[str, ...]] = None) -> None:
        extra = self.control.advertised() if self.control is not None else {}
        if self.static_ip is not None:
            extra.update(self.static_ip.feature_keys())
        result = self.agent.publish(self.store, self.publisher, extra, only)
        self.rounds += 1
        if result.changed:
            self._record(last_publish=wall_clock())
        if only is None:  # a full round: the refusals it saw are all there are
            self._record(refused=result.refused)

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
        if self.static_ip is not None and (full or "interfaces" in dirty):
            # a waiting request may name a NIC that just appeared; the requests themselves
            # are watched, so a sweep that found the same NICs reads nothing
            nics = tuple(sorted((i.name, i.mac or "", -1 if i.vif is None else i.vif, i.lower)
                                for i in self.agent.resolved_interfaces()))
            if full or nics != self._static_ip_nics:
                self._static_ip_nics = None  # kept only once read: a refused read is retried
                self.static_ip.on_event(self.store)
                self._static_ip_nics = nics

    def _lost(self, exc: XenStoreError) -> None:
        log.warning("lost XenStore: %s; reconnecting", exc)
        self.store.close()
        self._connected = False
        self._backoff = BACKOFF_FIRST
        self._next_reconnect = self.clock()
        self._record(connected=False)

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
        resumed = self.resume.check(self.store, clock_jump)
        if resumed is None:
            return
        self.resumes += 1
        if self.control is not None:
            self.control.forget()
            self.control.learn(self.store)
        self._full = True
        self._publish_dirty()
        if self.hooks is not None:
            self.hooks.start("post-resume", resumed.hook_details())
            if resumed.migrated:
                self.hooks.start("post-migrate", resumed.hook_details())

    # --- one wake-up's worth of work -----------------------------------------------------

    def _serve(self) -> None:
        """Everything the flags say happened, control first, then one publish."""
        if self._stop_requested:
            self._stopping = True
            return
        if self._hup_requested:
            self._hup_requested = False
            log.info("SIGHUP: full republish")
            self._full = True
        if self._connection_ended:  # xenstored closed a connection (or we did)
            self._connection_ended = False
            if self._connected and not (self.store.connected and self.store.watching):
                self._lost(XenStoreUnavailable("XenStore closed the connection"))
        batch = self.watches.take()
        self._repair |= batch.overflow or any([self.publisher.note_event(p) for p in batch.other])
        if batch.domain:
            self._guarded(self._check_resume)
        if batch.control and self.control is not None:
            self._guarded(lambda: self.control.on_event(self.store))  # type: ignore[union-attr]
        if batch.static_ip and self.static_ip is not None:
            self._guarded(lambda: self.static_ip.on_event(self.store))  # type: ignore[union-attr]
        if self._jobs_done:  # a hook, a power command or a static IP job finished
            self._jobs_done = False
            if self.static_ip is not None:
                self._guarded(lambda: self.static_ip.poll(self.store))  # type: ignore[union-attr]
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
        is logged and the loop retries.  The event sources are opened before the
        first collection, so a change made while it runs is not missed."""
        looping = False
        try:
            events = False if once else self._open_sources()
            try:
                self._start_session()
            except XenStoreUnavailable:
                raise
            except XenStoreError as exc:
                log.warning("first publish incomplete: %s; retrying each round", exc)
            if once:
                return 0
            self.notifier.ready()
            self.notifier.status(f"publishing to {self.store.spec}")
            if self.hotplug is not None:
                self.hotplug.start()
            if events:
                tick, tick_only = tick_interval(self.notifier.watchdog_interval), MEMORY_ONLY
                sweep: Optional[float] = self.config.interval
            else:
                tick, tick_only, sweep = self.config.poll_interval, ALL, None
            looping = True
            self._loop(tick, tick_only, sweep)
        finally:
            # stopped by the system going down: what was started for it runs to its end
            kind = self.shutdown_kind() if looping and self.shutdown_kind is not None else None
            if looping:
                self.notifier.stopping()
            if self.control is not None and kind is None:
                self.control.cancel()
            if self.hooks is not None and kind is None:
                self.hooks.cancel_all()
            if self.hotplug is not None:
                self.hotplug.stop()
            self.sources.close()
            self.notifier.close()
        if self.hooks is not None and kind is not None:
            run_shutdown_hooks(self.hooks, kind,
                               self.control.served_shutdown if self.control is not None else None)
        return 0

    def _open_sources(self) -> bool:
        """Network events and file watches; True when network changes arrive as events."""
        if self.sources.open(ALL):
            log.info("network changes: %s events; memory checked every %gs, full sweep every %gs",
                     self.sources.net.name if self.sources.net is not None else "no",
                     tick_interval(self.notifier.watchdog_interval), self.config.interval)
            return True
        log.info("network changes: no event source here; polling everything every %gs",
                 self.config.poll_interval)
        return False

    def _loop(self, tick: float, tick_only: FrozenSet[str], sweep: Optional[float]) -> None:
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
                if self.resume.clock_jumped():
                    self._guarded(lambda: self._check_resume(clock_jump=True))
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
