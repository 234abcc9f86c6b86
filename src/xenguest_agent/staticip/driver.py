"""Drives :class:`~xenguest_agent.staticip.manager.StaticIpManager` for the daemon's loop.

The loop calls :meth:`StaticIpDriver.on_event` when a watch under the setting's paths
fires (or the interfaces changed) and :meth:`StaticIpDriver.poll` when woken by
``notify``; jobs (files written, the network system's commands run, each with its
timeout) run one after another on a thread beside the loop, and their results are
written back on the loop in one transaction each.  While jobs run, further events
only mark that the tree must be looked at again once they are done.

Until the first request arrives only :mod:`~xenguest_agent.staticip.probe` is loaded
(whether to advertise, what to watch, whether a request is there): the manager, with the
parsing, planning and applying modules and their imports, is built then, once.  Nothing
is re-applied at start: a setting is only ever applied when the toolstack writes it.
"""

from __future__ import annotations

import collections
import threading

from xenguest_agent.log import get_logger
from xenguest_agent.staticip import probe

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Deque, Dict, List, Optional, Sequence

    from xenguest_agent.facts import Interface
    from xenguest_agent.host import Host
    from xenguest_agent.staticip.manager import Job, StaticIpManager
    from xenguest_agent.xenstore import Transaction, XenStore

log = get_logger(__name__)


class StaticIpDriver:
    """One worker thread at a time; results go back through ``notify``.

    ``host``: the guest's files and command runner; ``interfaces``: the guest's NICs now
    (for matching a request to one); ``enabled``: the ``network.static_ip`` setting."""

    def __init__(self, host: Host, interfaces: Callable[[], Sequence[Interface]],
                 enabled: bool = True, notify: Callable[[], None] = lambda: None) -> None:
        self.host = host
        self.interfaces = interfaces
        self.enabled = enabled
        self.backend = probe.detect(host)  # its name; the backend itself comes with the manager
        self.notify = notify
        self.manager: Optional[StaticIpManager] = None
        self._done: Deque[Job] = collections.deque()
        self._worker: Optional[threading.Thread] = None
        self._again = False

    def advertise(self) -> bool:
        """As :meth:`StaticIpManager.advertise`: the setting is on and a backend was found."""
        return self.enabled and self.backend is not None

    def watch_paths(self) -> List[str]:
        return list(probe.ROOTS) if self.advertise() else []

    def feature_keys(self) -> Dict[str, str]:
        return {probe.FEATURE_KEY: "1"} if self.advertise() else {}

    @property
    def busy(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def _manager(self) -> StaticIpManager:
        if self.manager is None:
            from xenguest_agent.staticip.manager import BACKENDS, StaticIpManager

            assert self.backend is not None  # only called while advertised
            self.manager = StaticIpManager(self.host, self.interfaces, self.enabled,
                                           BACKENDS[self.backend]())
        return self.manager

    def on_event(self, store: XenStore) -> None:
        """Something under the watched paths changed: read the requests (on the loop,
        XenStore reads only) and start their jobs beside it."""
        if not self.advertise():
            return
        if self.busy or self._done:
            self._again = True
            return
        if self.manager is None and not probe.requested(store.read, store.ls):
            return  # no request has ever been here: nothing to load yet
        jobs = self._manager().on_change(store.read, store.ls)
        if jobs:
            self._worker = threading.Thread(target=self._run, args=(jobs,),
                                            name="xenguest-static-ip", daemon=True)
            self._worker.start()

    def _run(self, jobs: List[Job]) -> None:
        for job in jobs:
            try:
                job.run()
            except Exception:  # run() reports its own failures; a bug must not be silent
                log.exception("static IP job failed unexpectedly")
            self._done.append(job)
            self.notify()

    def poll(self, store: XenStore) -> None:
        """On the loop, after ``notify``: write back what finished; look again if asked."""
        manager = self.manager
        while self._done and manager is not None:  # jobs exist only once the manager does
            job = self._done.popleft()

            def work(tx: Transaction, job: Job = job, manager: StaticIpManager = manager) -> None:
                for path, value in manager.finish(job, tx.read).items():
                    if value is None:
                        tx.rm(path)
                    else:
                        tx.write(path, value)

            store.transact(work)
        if not self.busy and self._again:
            self._again = False
            self.on_event(store)
