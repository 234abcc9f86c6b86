"""Publishes a desired ``{path: value}`` state: only the difference, in one transaction,
and keeps it true.

What XenServer's own agent does well is kept (skip unchanged writes, sweep keys
that were not re-written, forget the cache when the domain was resumed or
migrated); what it lacks is added: the diff is applied atomically, stale
subtrees are removed with the fewest requests, a key xenstored refuses is
skipped while every other key still lands and is retried with backoff, and
what another writer changes under the owned keys is repaired (see
:meth:`Publisher.note_event`).

Refusals that concern one key (:data:`~xenguest_agent.xenstore.KEY_ERRORS`, whose
docstring cites xenstored for each) are per key; any other error fails the
round, which the caller retries.
"""

from __future__ import annotations

import errno
import re
import threading
import time
from functools import partial

from xenguest_agent import schema
from xenguest_agent.log import get_logger
from xenguest_agent.ratelog import RateLimitedLog
from xenguest_agent.readback import ReadBack, read_back
from xenguest_agent.records import dataclass, field
from xenguest_agent.xenstore import (
    KEY_ERRORS,
    Transaction,
    XenStore,
    XenStoreError,
    XenStoreUnavailable,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple

log = get_logger(__name__)

#: Commit refusals that mean "a quota": publish key by key so what fits lands.
_QUOTA_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT})

#: Backoff of a refused key: first retry after RETRY_FIRST seconds, doubling to
#: RETRY_MAX; reset when the key lands.  A new value is tried at once.
RETRY_FIRST = 1.0
RETRY_MAX = 300.0
#: How long an event expected from our own write or removal is awaited.  Events
#: arrive within milliseconds; an expectation that is never met (removing a node
#: another writer already removed fires nothing) must not hide a later change.
EXPECT_TTL = 10.0

_HOME = re.compile(r"/local/domain/[0-9]+/")
_REMOVE = None  # the "value" of a refused removal


@dataclass
class PublishResult:
    """What one publish did: for logs, tests and benchmarks."""

    written: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    refused: List[Tuple[str, int]] = field(default_factory=list)
    unreadable: List[Tuple[str, int]] = field(default_factory=list)
    repaired: List[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.written or self.removed)


@dataclass
class _Refusal:
    value: Optional[str]  # the refused value; None for a removal
    step: float
    due: float


def _stale_roots(stale: Iterable[str], desired: Mapping[str, str]) -> List[str]:
    """The fewest subtrees to remove so every stale key goes and no desired key does.

    A stale key's highest ancestor inside an owned tree (or the key itself) that
    holds no desired key is removed whole: a vanished VIF is one RM of
    ``attr/vif/N``, not one per address.  A stale node that holds desired keys
    (one whose children could not be listed) is removed itself; its desired
    keys are then written again."""
    roots: Set[str] = set()
    for key in stale:
        tree = next((t for t in schema.OWNED_TREES if key.startswith(t + "/")), None)
        chosen = key
        if tree is not None:
            parts = key[len(tree) + 1:].split("/")
            for depth in range(1, len(parts) + 1):
                candidate = "/".join([tree] + parts[:depth])
                if not any(d == candidate or d.startswith(candidate + "/") for d in desired):
                    chosen = candidate
                    break
        roots.add(chosen)
    return sorted(r for r in roots if not any(r.startswith(o + "/") for o in roots if o != r))


def _below(key: str, root: str) -> bool:
    return key == root or key.startswith(root + "/")


def _relative(path: str) -> str:
    """``/local/domain/5/data/x`` -> ``data/x``: events carry the path as watched."""
    match = _HOME.match(path)
    return path[match.end():] if match else path


class Publisher:
    """Keeps XenStore equal to the last desired state, writing only differences.

    How a loop keeps it true without polling: for each path of
    ``schema.OWNED_TREES + schema.OWNED_KEYS``, call :meth:`expect_event` then
    set a watch on it (one token per watch); pass every event of those watches
    to :meth:`note_event` as it arrives and publish soon whenever it returns
    True (the facts need not be collected again: ``Agent.publish(...,
    only=())``); wake at :meth:`next_retry` and publish, so refused keys are
    retried; :meth:`invalidate` after a resume, a migration or a reconnect.
    :meth:`note_event`, :meth:`expect_event`, :attr:`needs_repair` and
    :attr:`awaited_events` may be called from the watch thread; the rest from
    the one thread that publishes."""

    def __init__(self, store: XenStore, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        #: What XenStore holds under the owned keys, as far as we know: leaf ->
        #: value; None for a node present but not read (garbage, or unlistable).
        self._published: Optional[Dict[str, Optional[str]]] = None
        self._refusals: Dict[str, _Refusal] = {}
        self._warn = RateLimitedLog(log, clock=clock)
        self._lock = threading.Lock()  # note_event may run on the watch thread
        self._expected: Dict[str, List[float]] = {}
        self._suspects: Set[str] = set()

    def invalidate(self) -> None:
        """Forget what was published: the next publish reads XenStore back and
        rewrites everything that differs (after a resume, a migration or a
        reconnect the tree may be empty or someone else's)."""
        self._published = None
        self._refusals.clear()
        with self._lock:
            self._suspects.clear()

    # --- watch events ---------------------------------------------------------------------

    def note_event(self, path: str) -> bool:
        """A watch event for ``path`` arrived (relative or absolute): True when it
        is an owned path the next publish must re-read, False when it is not
        owned or is the echo of our own write or removal.

        Cheap and thread-safe: no request.  C xenstored (xenstored_watch.c
        ``fire_watches``/``is_child``) fires a watch for a write at or below the
        watched path and, on a removal, for the removed node's watchers at or
        above it and for watchers of each node removed with it (exact match);
        in a transaction each changed node fires once, at commit
        (xenstored_transaction.c ``queue_watches``, ``finalize_transaction``);
        a refused request fires nothing.  With one watch per owned key and
        tree (they do not nest), each of our successful writes and removals
        fires exactly one event, with the path we sent: each is recorded as
        expected before it is sent and consumed here when its event arrives.
        Any other event is another writer's: its path becomes a suspect."""
        relative = _relative(path)
        if not schema.owns(relative):
            return False
        with self._lock:
            if self._consume(relative):
                return False
            self._suspects.add(relative)
        return True

    def expect_event(self, path: str) -> None:
        """A watch on ``path`` is about to be set: xenstored fires each new watch
        once at once (xenstored_watch.c ``do_watch``), which is not a change."""
        with self._lock:
            self._expect(_relative(path))

    @property
    def needs_repair(self) -> bool:
        """True while an event left an owned path to re-read (publish soon)."""
        return bool(self._suspects)

    @property
    def awaited_events(self) -> int:
        """Events expected from our own requests that have not arrived yet."""
        now = self.clock()
        with self._lock:
            return sum(1 for ts in self._expected.values() for t in ts if t > now)

    def next_retry(self) -> Optional[float]:
        """Monotonic time when a refused key is due to be retried, or None."""
        return min((r.due for r in self._refusals.values()), default=None)

    def _expect(self, path: str) -> None:
        now = self.clock()
        pending = [t for t in self._expected.get(path, ()) if t > now]
        pending.append(now + EXPECT_TTL)
        self._expected[path] = pending

    def _consume(self, path: str) -> bool:
        now = self.clock()
        pending = [t for t in self._expected.pop(path, ()) if t > now]
        if not pending:
            return False
        if pending[1:]:
            self._expected[path] = pending[1:]
        return True

    def _withdraw(self, paths: Iterable[str]) -> None:
        """Requests that fired no event after all (refused, or their transaction
        failed).  An expectation already consumed means another writer's event
        was taken for ours: that path becomes a suspect."""
        with self._lock:
            for path in paths:
                if not self._consume(path):
                    self._suspects.add(path)

    def _prune(self) -> None:
        now = self.clock()
        with self._lock:
            self._expected = {p: [t for t in ts if t > now] for p, ts in self._expected.items()
                              if any(t > now for t in ts)}

    # --- refusals -------------------------------------------------------------------------

    def _held(self, path: str, value: Optional[str], now: float) -> bool:
        """True while ``path`` with this value (None: a removal) waits for its retry."""
        refusal = self._refusals.get(path)
        return refusal is not None and refusal.value == value and now < refusal.due

    def _refuse(self, result: PublishResult, path: str, value: Optional[str],
                exc: XenStoreError) -> None:
        now = self.clock()
        old = self._refusals.get(path)
        step = min(old.step * 2, RETRY_MAX) if old is not None else RETRY_FIRST
        self._refusals[path] = _Refusal(value, step, now + step)
        result.refused.append((path, exc.errno))
        action = "remove" if value is None else "write"
        self._warn.warning(("refused", action, path, exc.errno),
                           "xenstored refused to %s %s: %s (retrying in %gs)", action, path, exc, step)

    # --- reading back ---------------------------------------------------------------------

    def _note_unreadable(self, result: PublishResult, back: ReadBack) -> None:
        for path, code in back.unreadable:
            result.unreadable.append((path, code))
            self._warn.warning(("unreadable", path, code),
                               "cannot read %s back (%s): skipped; the other keys are published",
                               path, errno.errorcode.get(code, code))

    # --- publishing -----------------------------------------------------------------------

    def _plan(self, current: Mapping[str, Optional[str]], desired: Mapping[str, str],
              markers: Mapping[str, str], now: float) -> Tuple[List[str], Dict[str, str]]:
        """The subtrees to remove and the keys to write, leaving out refused
        ones still waiting for their retry."""
        keep = {**desired, **markers}
        roots = [r for r in _stale_roots([k for k in current if k not in keep], keep)
                 if not self._held(r, _REMOVE, now)]
        writes = {p: v for p, v in desired.items()
                  if current.get(p) != v and not self._held(p, v, now)}
        return roots, writes

    def publish(self, desired: Mapping[str, str], markers: Mapping[str, str] = {},
                quiet: Iterable[str] = ()) -> PublishResult:
        """Make the owned keys equal ``desired`` in one transaction.

        ``markers`` (``data/updated``...) are written, even when unchanged, after
        a full publish and whenever a key outside ``quiet`` (memory) changed.
        Paths that watch events made suspect are read back first (only them)."""
        quiet = frozenset(quiet)
        keep = {**desired, **markers}
        with self._lock:
            suspects = sorted(self._suspects)
        single = False
        if self._published is not None and not suspects:
            roots, writes = self._plan(self._published, desired, markers, self.clock())
            if not roots and not writes:
                return PublishResult()  # idle: not even a transaction start
            # one quiet key (memory) changed: a lone WRITE is atomic by itself,
            # so it costs one request instead of a transaction's three
            single = not roots and len(writes) == 1 and all(p in quiet for p in writes)

        def work(tx: Transaction, sent: List[str]) -> Tuple[PublishResult, Dict[str, Optional[str]]]:
            result = PublishResult()
            if self._published is None:
                back = read_back(tx, keep, None)
                current = back.found
            else:
                current = dict(self._published)
                back = read_back(tx, keep, suspects)
                for suspect in suspects:
                    for key in [k for k in current if _below(k, suspect)]:
                        del current[key]
                current.update(back.found)
                result.repaired = suspects
            self._note_unreadable(result, back)
            state = dict(current)
            roots, pending = self._plan(current, desired, markers, self.clock())
            for path in roots:
                if self._attempt(result, sent, path, _REMOVE, partial(tx.rm, path)):
                    result.removed.append(path)
                    for key in [k for k in state if _below(k, path)]:
                        del state[key]
            self._write(result, sent, tx, state, pending)
            # the markers close a batch that changed something (not memory alone), and
            # are repaired like any owned key when another writer removed or changed one
            damaged = any(current.get(p) != v for p, v in markers.items()
                          if any(_below(p, s) for s in suspects))
            if self._published is None or damaged or any(
                    p not in quiet for p in (*result.written, *result.removed)):
                self._write(result, sent, tx, state,
                            {p: v for p, v in markers.items() if p not in pending})
            return result, state

        if single:
            result, state = work(Transaction(self.store, 0), [])
        else:
            result, state = self._transact(work)
        self._published = state
        self._prune()
        with self._lock:
            self._suspects.difference_update(suspects)
        self._refusals = {p: r for p, r in self._refusals.items()
                          if (p in keep if r.value is not None
                              else any(_below(k, p) for k in state))}
        if result.changed:
            log.info("published: %d written, %d removed%s%s", len(result.written),
                     len(result.removed),
                     f", {len(result.refused)} refused" if result.refused else "",
                     f", {len(result.repaired)} repaired" if result.repaired else "")
        return result

    def _transact(self, work: Callable[[Transaction, List[str]],
                                       Tuple[PublishResult, Dict[str, Optional[str]]]]
                  ) -> Tuple[PublishResult, Dict[str, Optional[str]]]:
        attempts: List[List[str]] = []

        def attempt(tx: Transaction) -> Tuple[PublishResult, Dict[str, Optional[str]]]:
            # a failed commit (EAGAIN) fires nothing: the events the previous
            # attempt expected are withdrawn before this one records its own
            if attempts:
                self._withdraw(attempts.pop())
            sent: List[str] = []
            attempts.append(sent)
            return work(tx, sent)

        try:
            return self.store.transact(attempt)  # type: ignore[return-value]
        except XenStoreError as exc:
            if attempts:
                self._withdraw(attempts.pop())
            if isinstance(exc, XenStoreUnavailable) or exc.errno not in _QUOTA_ERRORS:
                raise
            # C xenstored checks the node quota again when a transaction commits,
            # so one key over the quota fails the whole batch (ENOSPC at
            # TRANSACTION_END).  Publish key by key instead: everything that
            # fits lands, and each refused key is logged by name.
            self._warn.warning(("commit", exc.errno),
                               "xenstored refused the whole batch at commit (%s): a quota is "
                               "reached; publishing key by key", exc)
            return work(Transaction(self.store, 0), [])

    def _write(self, result: PublishResult, sent: List[str], tx: Transaction,
               state: Dict[str, Optional[str]], values: Mapping[str, str]) -> None:
        for path, value in sorted(values.items()):
            if self._attempt(result, sent, path, value, partial(tx.write, path, value)):
                result.written.append(path)
                state[path] = value
            else:
                state.pop(path, None)

    def _attempt(self, result: PublishResult, sent: List[str], path: str, value: Optional[str],
                 request: Callable[[], None]) -> bool:
        """Send one request, expecting its watch event; a refusal that concerns
        only this key is recorded (retried with backoff) and the round goes on;
        anything else propagates."""
        watched = schema.owns(path)
        if watched:
            with self._lock:
                self._expect(path)
        try:
            request()
        except XenStoreError as exc:
            if watched:
                self._withdraw([path])
            if isinstance(exc, XenStoreUnavailable) or exc.errno not in KEY_ERRORS:
                raise
            self._refuse(result, path, value, exc)
            return False
        if watched:
            sent.append(path)
        self._refusals.pop(path, None)
        return True
