"""Drives :class:`~xenguest_agent.staticip.manager.StaticIpManager` for the daemon's loop.

The loop calls :meth:`StaticIpDriver.on_event` when a watch under the setting's paths
fires (or the interfaces changed) and :meth:`StaticIpDriver.poll` when woken by
``notify``; jobs (files written, the network system's commands run, each with its
timeout) run one after another on a thread beside the loop, and their results are
written back on the loop in one transaction each.  While jobs run, further events
only mark that the tree must be looked at again once they are done.
"""

from __future__ import annotations

import collections
import threading

from xenguest_agent.log import get_logger
from xenguest_agent.staticip.manager import Job, StaticIpManager
from xenguest_agent.xenstore import Transaction, XenStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Deque, Dict, List, Optional

log = get_logger(__name__)


class StaticIpDriver:
    """One worker thread at a time; results go back through ``notify``."""

    def __init__(self, manager: StaticIpManager, notify: Callable[[], None] = lambda: None) -> None:
        self.manager = manager
        self.notify = notify
        self._done: Deque[Job] = collections.deque()
        self._worker: Optional[threading.Thread] = None
        self._again = False

    def watch_paths(self) -> List[str]:
        return self.manager.watch_paths() if self.manager.advertise() else []

    def feature_keys(self) -> Dict[str, str]:
        return self.manager.feature_keys()

    @property
    def busy(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def on_event(self, store: XenStore) -> None:
        """Something under the watched paths changed: read the requests (on the loop,
        XenStore reads only) and start their jobs beside it."""
        if not self.manager.advertise():
            return
        if self.busy or self._done:
            self._again = True
            return
        jobs = self.manager.on_change(store.read, store.ls)
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
        while self._done:
            job = self._done.popleft()

            def work(tx: Transaction, job: Job = job) -> None:
                for path, value in self.manager.finish(job, tx.read).items():
                    if value is None:
                        tx.rm(path)
                    else:
                        tx.write(path, value)

            store.transact(work)
        if not self.busy and self._again:
            self._again = False
            self.on_event(store)
