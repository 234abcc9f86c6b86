"""Telling that the domain was resumed or migrated: the guest's XenStore tree is not.

After a restore or a migration every key the agent wrote is gone and the domain may
have a new domid.  Signs, any of which means "publish everything again and run the
post-resume hooks":

* ``unique-domain-id`` changed: xenopsd writes a new one at domain creation, before
  unpausing, and on every resume or migration (CA-30811); plain xl/libxl writes none;
* ``domid`` changed: a restore or a migration makes a new domain (plain xl);
* the clock jumped: CLOCK_BOOTTIME advances over a suspend, CLOCK_MONOTONIC does not,
  so a checkpoint or a suspend/resume in place (same domid) shows as a growing gap.
"""

from __future__ import annotations

import time

from xenguest_agent.log import get_logger
from xenguest_agent.records import dataclass
from xenguest_agent.xenstore import XenStore, XenStoreError, XenStoreUnavailable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Dict, Optional, Tuple
    Domain = Tuple[Optional[str], Optional[str]]

log = get_logger(__name__)

UNIQUE_DOMAIN_ID = "unique-domain-id"
DOMID = "domid"

#: A gap between CLOCK_BOOTTIME and CLOCK_MONOTONIC that grew by more than this
#: means the domain was suspended (the loop never sleeps this long unnoticed).
SUSPEND_JUMP = 2.0



def suspended_seconds() -> float:
    """Time spent suspended since boot (Linux: BOOTTIME - MONOTONIC); 0 where unknown."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return 0.0
    return time.clock_gettime(boottime) - time.monotonic()


def read_key(store: XenStore, path: str) -> Optional[str]:
    """A read whose refusal concerns this key only (None, logged)."""
    try:
        return store.read(path)
    except XenStoreUnavailable:
        raise
    except XenStoreError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


@dataclass(frozen=True)
class Resumed:
    """One resume: the domain before and after, and whether it is a new domain."""

    old: Domain
    new: Domain
    clock_jump: bool

    @property
    def migrated(self) -> bool:
        return self.new[0] != self.old[0]

    def hook_details(self) -> Dict[str, str]:
        """What the post-resume and post-migrate hooks are told (XENGUEST_* variables)."""
        return {"old_domid": self.old[0] or "", "new_domid": self.new[0] or "",
                "unique_domain_id": self.new[1] or "", "old_unique_domain_id": self.old[1] or ""}


class ResumeDetector:
    """Remembers the domain a session started in and the suspend clock."""

    def __init__(self, suspended: Callable[[], float] = suspended_seconds) -> None:
        self.suspended = suspended
        self.domain: Domain = (None, None)
        self._base = suspended()

    def start(self, store: XenStore) -> None:
        """A new session: the domain as it is now is the reference."""
        self.domain = self.read(store)

    @staticmethod
    def read(store: XenStore) -> Domain:
        return read_key(store, DOMID), read_key(store, UNIQUE_DOMAIN_ID)

    def clock_jumped(self) -> bool:
        """True (once) when the suspend clock moved since the last look."""
        now = self.suspended()
        if now - self._base > SUSPEND_JUMP:
            log.info("the clock jumped %.1fs: the domain was suspended", now - self._base)
            self._base = now
            return True
        self._base = max(self._base, now)
        return False

    def check(self, store: XenStore, clock_jump: bool = False) -> Optional[Resumed]:
        """Compare domid and unique-domain-id with the reference; a Resumed when they
        changed (or the clock jumped), after which the new domain is the reference."""
        domain = self.read(store)
        if domain == self.domain and not clock_jump:
            return None
        resumed = Resumed(self.domain, domain, clock_jump)
        self.domain = domain
        log.info("domain resumed%s (domid %s -> %s, unique-domain-id %s -> %s%s): "
                 "republishing everything", " in a new domain" if resumed.migrated else "",
                 resumed.old[0], domain[0], resumed.old[1], domain[1],
                 ", clock jumped" if clock_jump else "")
        return resumed
