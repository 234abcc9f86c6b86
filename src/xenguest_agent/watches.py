"""The daemon's XenStore watches: which paths, their tokens, and the inbox their events
land in until the loop takes them.

Watch events arrive on the watch connection's thread.  They are appended to a bounded
deque (no lock a signal handler or the loop could wait on) and the loop is woken; the
loop takes the whole batch at once and sorts it: the domain's identity, the shutdown
request, static IP settings, and everything else (owned keys, for repair).
"""

from __future__ import annotations

import collections

from xenguest_agent import schema
from xenguest_agent.control import SHUTDOWN_KEY
from xenguest_agent.log import get_logger
from xenguest_agent.records import dataclass, field
from xenguest_agent.resume import DOMID, UNIQUE_DOMAIN_ID
from xenguest_agent.staticip.probe import SRIOV_ROOT, VIF_ROOT
from xenguest_agent.xenstore import XenStore, XenStoreError, XenStoreUnavailable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Deque, Iterable, List, Tuple

log = get_logger(__name__)


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
STATIC_IP_TOKENS = tuple(watch_token(p) for p in (VIF_ROOT, SRIOV_ROOT))

#: Watch events kept between two wake-ups; past this the batch counts as "anything
#: may have changed" (every kind is looked at again) instead of growing.
WATCH_BACKLOG = 1024


def watch(store: XenStore, path: str) -> None:
    """One watch; a refusal about this path is logged and the others still go."""
    try:
        store.watch(path, watch_token(path))
    except XenStoreUnavailable:
        raise
    except XenStoreError as exc:
        log.warning("cannot watch %s: %s", path, exc)


def set_watches(store: XenStore, control: bool, expect: Callable[[str], None],
                extra: Iterable[str] = ()) -> None:
    """Every watch of a session: control/shutdown (when the agent handles it), the domain's
    identity, each owned key and tree (``expect`` is told first: a new watch fires once at
    once, xenstored_watch.c ``do_watch``, which is not a change), then ``extra`` paths."""
    if control:
        watch(store, SHUTDOWN_KEY)
    watch(store, DOMID)
    watch(store, UNIQUE_DOMAIN_ID)
    for path in OWNED_PATHS:
        expect(path)
        watch(store, path)
    for path in extra:
        watch(store, path)


@dataclass
class WatchBatch:
    """What one wake-up's watch events say may have changed."""

    domain: bool = False
    control: bool = False
    static_ip: bool = False
    overflow: bool = False
    other: List[str] = field(default_factory=list)  # paths (owned keys: repair candidates)


class WatchInbox:
    """Filled on the watch thread (:meth:`put`), emptied by the loop (:meth:`take`)."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._events: Deque[Tuple[str, str]] = collections.deque()
        self._overflow = False

    def put(self, path: str, token: str) -> None:
        if len(self._events) >= WATCH_BACKLOG:
            self._overflow = True
        else:
            self._events.append((path, token))
        self._wake()

    def take(self) -> WatchBatch:
        overflow, self._overflow = self._overflow, False
        batch = WatchBatch(domain=overflow, control=overflow, static_ip=overflow, overflow=overflow)
        while self._events:
            path, token = self._events.popleft()
            if token in DOMAIN_TOKENS:
                batch.domain = True
            elif token == TOKEN_SHUTDOWN:
                batch.control = True
            elif token.startswith(STATIC_IP_TOKENS):
                batch.static_ip = True
            else:
                batch.other.append(path)
        return batch
