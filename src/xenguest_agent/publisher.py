"""Publishes a desired ``{path: value}`` state: only the difference, in one transaction.

What XenServer's own agent does well is kept (skip unchanged writes, sweep keys
that were not re-written, forget the cache when the domain was resumed or
migrated); what it lacks is added: the diff is applied atomically, stale
subtrees are removed with the fewest requests, and a key xenstored refuses
(EACCES on a read-only ``control/``, ENOSPC/E2BIG at a quota) is logged once and
skipped while every other key still lands.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from xenguest_agent import schema
from xenguest_agent.xenstore import Transaction, XenStore, XenStoreError, XenStoreUnavailable

log = logging.getLogger(__name__)

#: Refusals that concern one key and must not stop the rest of the round.
KEY_ERRORS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.E2BIG, errno.EINVAL, errno.EROFS,
              errno.EEXIST, errno.ENOMEM, getattr(errno, "EDQUOT", -1)}


@dataclass
class PublishResult:
    """What one publish did: for logs, tests and benchmarks."""

    written: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    refused: List[Tuple[str, int]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.written or self.removed)


def _stale_roots(stale: Iterable[str], desired: Mapping[str, str]) -> List[str]:
    """The fewest subtrees to remove so every stale key goes and no desired key does.

    A stale key's highest ancestor inside an owned tree (or the key itself) that
    holds no desired key is removed whole: a vanished VIF is one RM of
    ``attr/vif/N``, not one per address."""
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
    # drop roots below another root
    return sorted(r for r in roots if not any(r.startswith(o + "/") for o in roots if o != r))


class Publisher:
    """Keeps XenStore equal to the last desired state, writing only differences."""

    def __init__(self, store: XenStore) -> None:
        self.store = store
        self._published: Optional[Dict[str, str]] = None
        self._logged_refusals: Set[Tuple[str, int]] = set()
        # value xenstored last refused per key: not retried every round while unchanged
        self._refused_values: Dict[str, str] = {}

    def invalidate(self) -> None:
        """Forget what was published: the next publish reads XenStore back and
        rewrites everything that differs (after a resume, a migration or a
        reconnect the tree may be empty or someone else's)."""
        self._published = None
        self._refused_values.clear()

    @property
    def published(self) -> Mapping[str, str]:
        return dict(self._published or {})

    def _read_owned(self, tx: Transaction) -> Dict[str, str]:
        """The agent-owned keys as they are in XenStore now (leaves only)."""
        found: Dict[str, str] = {}

        def walk(path: str) -> None:
            children = tx.ls(path)
            if children is None:
                return
            if not children:
                value = tx.read(path)
                if value is not None:
                    found[path] = value
                return
            for child in children:
                walk(f"{path}/{child}")

        for tree in schema.OWNED_TREES:
            walk(tree)
        for key in schema.OWNED_KEYS:
            value = tx.read(key)
            if value is not None:
                found[key] = value
        return found

    def _attempt(self, result: PublishResult, path: str, action: str,
                 request: Callable[[], None]) -> bool:
        """Send one request; a refusal that concerns only this key is recorded and
        logged (once) and the round goes on; anything else propagates."""
        try:
            request()
        except XenStoreUnavailable:
            raise
        except XenStoreError as exc:
            if exc.errno not in KEY_ERRORS:
                raise
            self._refused(result, path, exc, action)
            return False
        return True

    def _refused(self, result: PublishResult, path: str, exc: XenStoreError, action: str) -> None:
        result.refused.append((path, exc.errno))
        if (path, exc.errno) not in self._logged_refusals:
            self._logged_refusals.add((path, exc.errno))
            log.warning("xenstored refused to %s %s: %s (logged once per key and error)",
                        action, path, exc)

    def _changes(self, desired: Mapping[str, str], markers: Mapping[str, str]) -> int:
        """How many keys a publish would touch, from the cache alone (at least 1
        when something is stale); only meaningful while the cache is valid."""
        published = self._published or {}
        keep = {**desired, **markers}
        stale = sum(1 for key in published if key not in keep)
        return stale + sum(1 for p, v in desired.items()
                           if published.get(p) != v and self._refused_values.get(p) != v)

    def publish(self, desired: Mapping[str, str], markers: Mapping[str, str] = {},
                quiet: Iterable[str] = ()) -> PublishResult:
        """Make the owned keys equal ``desired`` in one transaction.

        ``markers`` (``data/updated``...) are written, even when unchanged, after
        a full publish and whenever a key outside ``quiet`` (memory) changed."""
        quiet = frozenset(quiet)
        single = False
        if self._published is not None:
            changes = self._changes(desired, markers)
            if changes == 0:
                return PublishResult()  # idle: not even a transaction start
            # one quiet key (memory) changed: a lone WRITE is atomic by itself,
            # so it costs one request instead of a transaction's three
            single = changes == 1 and all(
                p in quiet for p, v in desired.items() if self._published.get(p) != v)

        def work(tx: Transaction) -> Tuple[PublishResult, Dict[str, str]]:
            full = self._published is None
            current = self._read_owned(tx) if full else dict(self._published)
            result = PublishResult()
            state = dict(current)
            keep = {**desired, **markers}
            for path in _stale_roots([k for k in current if k not in keep], keep):
                if not self._attempt(result, path, "remove", lambda: tx.rm(path)):
                    continue
                result.removed.append(path)
                for key in [k for k in state if k == path or k.startswith(path + "/")]:
                    del state[key]
            pending = {p: v for p, v in desired.items()
                       if current.get(p) != v and self._refused_values.get(p) != v}
            if full or any(p not in quiet for p in (*pending, *result.removed)):
                pending.update(markers)
            for path, value in sorted(pending.items()):
                if not self._attempt(result, path, "write", lambda: tx.write(path, value)):
                    self._refused_values[path] = value
                    state.pop(path, None)
                    continue
                self._refused_values.pop(path, None)
                result.written.append(path)
                state[path] = value
            return result, state

        if single:
            result, state = work(Transaction(self.store, 0))
            self._published = state
            return result
        try:
            result, state = self.store.transact(work)  # type: ignore[misc]
        except XenStoreUnavailable:
            raise
        except XenStoreError as exc:
            if exc.errno not in KEY_ERRORS:
                raise
            # C xenstored checks the node quota when a transaction commits, so one
            # key over the quota fails the whole batch (ENOSPC at TRANSACTION_END).
            # Publish key by key instead: everything that fits lands, and each
            # refused key is logged once by name.
            if ("<commit>", exc.errno) not in self._logged_refusals:
                self._logged_refusals.add(("<commit>", exc.errno))
                log.warning("xenstored refused the whole batch at commit (%s): a quota is "
                            "reached; publishing key by key", exc)
            result, state = work(Transaction(self.store, 0))
        self._published = state
        if result.changed:
            log.info("published: %d written, %d removed%s", len(result.written), len(result.removed),
                     f", {len(result.refused)} refused" if result.refused else "")
        return result
